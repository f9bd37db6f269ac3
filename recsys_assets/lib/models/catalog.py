"""Which models the pipeline knows, by name, in one place (no training stack imported here, so the
Dagster code location can read it without loading torch).

RecBole's models are trained through the adapter (`recbole_config.SUPPORTED_MODELS` holds their
settings); the native ones are this package's own (`native.py`, `buy_again.py`); the implicit ones train
with the `implicit` library (`implicit_cf.py`).
"""

# Collaborative models trained with the `implicit` library (`implicit_cf.py`): sparse, multi-threaded, made for
# large catalogs. They serve and can be the Hybrid's collaborative part, like the exportable RecBole models.
IMPLICIT = ("ALS", "ImplicitBPR", "ItemItemCosine", "ItemItemBM25")
# `model_candidates` trains these unless configured (the retrain job trains `Settings.retrain_models`).
RECBOLE_DEFAULT = ("Pop", "ItemKNN", "EASE", "BPR", "NeuMF", "LightGCN", "MultiVAE", "SASRec")
NATIVE = ("Popularity", "Content", "Hybrid", "BuyAgain")  # BuyAgain: the repeat setting's own ranker
# RecBole models the serving artifact can hold (NeuMF, NGCF and SASRec score only inside torch).
EXPORTABLE = ("Pop", "ItemKNN", "EASE", "BPR", "LightGCN", "MultiVAE")
# The hyper-parameter search's models (their trial budgets and search spaces are in `tuning.py`).
TUNED = ("ItemKNN", "EASE", "BPR", "LightGCN", "MultiVAE", "NeuMF")
