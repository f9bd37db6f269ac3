"""Offline evaluation shared by every model: the two split protocols and one set of top-K metrics.

`splits` cuts the canonical interactions once (RecBole's random per-user split and a global temporal
split) and labels cold-start slices; `metrics` scores any model's top-K lists with definitions that
match RecBole 1.2.1's evaluator, so numbers from RecBole models and from our own models compare.
"""
