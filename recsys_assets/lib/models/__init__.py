"""Recommender models: RecBole compatibility fixes and the typed RecBole adapter.

Importing this package has no side effects; `recbole_compat.patch_recbole()` patches RecBole explicitly.
"""
