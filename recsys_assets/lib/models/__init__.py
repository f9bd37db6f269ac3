"""The recommender models: one interface (`base.Recommender`) over the native models (`native`) and the RecBole
models behind their typed adapter (`recbole_adapter`, with `recbole_config`, `recbole_data`, `recbole_trained`, and
`recbole_recommender` for the interface); `candidates` and `fitting` train and evaluate them, `refit` retrains the
chosen one for serving.

Importing this package has no side effects; `recbole_compat.patch_recbole()` patches RecBole explicitly.
"""
