"""Training budgets per model, and a small budgeted hyper-parameter search (Optuna, TPE sampler).

The search runs on the temporal protocol's validation part only (never the test part), a fixed
number of trials per model (`SEARCH_SPACES`, budget in `TRIALS`), and its best parameters become the
defaults of the comparison (`model_config(..., tuned=...)`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import optuna

logger = logging.getLogger(__name__)

# Budgets of the comparison (documented in docs/benchmarks.md). Epoch caps with early stopping on
# validation NDCG@10 keep the whole comparison, both protocols, within ten minutes on two cores.
STANDARD: dict[str, dict[str, Any]] = {
    "Pop": {"epochs": 1},
    "ItemKNN": {"epochs": 1, "params": {"k": 100, "shrink": 0.0}},
    "EASE": {"epochs": 1, "params": {"reg_weight": 250.0}},
    "BPR": {"epochs": 60, "learning_rate": 2e-3, "embedding_size": 64, "stopping_step": 5},
    "NeuMF": {"epochs": 10, "learning_rate": 2e-3, "embedding_size": 32, "stopping_step": 3},
    "LightGCN": {"epochs": 15, "learning_rate": 5e-3, "embedding_size": 64, "stopping_step": 3},
    "MultiVAE": {"epochs": 60, "learning_rate": 2e-3, "stopping_step": 5},
    "SASRec": {"epochs": 2, "learning_rate": 2e-3, "max_seq_length": 10, "stopping_step": 1},
}
# Smoke budget for tests: one short epoch each.
SMOKE: dict[str, dict[str, Any]] = {
    name: {**cfg, "epochs": 1, "stopping_step": 1} for name, cfg in STANDARD.items()
} | {"SASRec": {"epochs": 1, "max_seq_length": 5}}

BUDGETS = {"standard": STANDARD, "smoke": SMOKE}

# Search spaces and trial budgets. SASRec is not searched: one trial costs minutes on CPU.
TRIALS: dict[str, int] = {"ItemKNN": 6, "EASE": 6, "BPR": 4, "LightGCN": 3, "MultiVAE": 4, "NeuMF": 3}
SEARCH_SPACES: dict[str, Callable[[optuna.Trial], dict[str, Any]]] = {
    "ItemKNN": lambda t: {
        "params": {"k": t.suggest_int("k", 20, 400, log=True), "shrink": t.suggest_float("shrink", 0.0, 50.0)}
    },
    "EASE": lambda t: {"params": {"reg_weight": t.suggest_float("reg_weight", 10.0, 2000.0, log=True)}},
    "BPR": lambda t: {"learning_rate": t.suggest_float("learning_rate", 5e-4, 1e-2, log=True)},
    "LightGCN": lambda t: {
        "learning_rate": t.suggest_float("learning_rate", 5e-4, 1e-2, log=True),
        "params": {"n_layers": t.suggest_int("n_layers", 1, 3)},
    },
    "MultiVAE": lambda t: {"learning_rate": t.suggest_float("learning_rate", 5e-4, 1e-2, log=True)},
    "NeuMF": lambda t: {"learning_rate": t.suggest_float("learning_rate", 5e-4, 1e-2, log=True)},
}


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = {**base, **{k: v for k, v in extra.items() if k != "params"}}
    out["params"] = {**base.get("params", {}), **extra.get("params", {})}
    return out


def model_config(name: str, budget: str = "standard", seed: int = 2020, tuned: dict | None = None) -> dict[str, Any]:
    """Keyword arguments of `RecBoleModelConfig` for one model under a budget (plus tuned values)."""
    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; known: {sorted(BUDGETS)}")
    base = BUDGETS[budget].get(name, {"epochs": 1 if budget == "smoke" else 20})
    cfg = _merge(base, (tuned or {}).get(name, {}))
    return {"model": name, "seed": seed, "valid_metric": "NDCG@10", **cfg}


def search(
    name: str, objective: Callable[[dict[str, Any]], float], trials: int | None = None, seed: int = 2020
) -> tuple[dict[str, Any], optuna.Study]:
    """Maximise `objective(config_overrides)` (validation NDCG@10) over the model's search space."""
    space = SEARCH_SPACES[name]
    n = TRIALS[name] if trials is None else trials
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(lambda t: objective(space(t)), n_trials=n)
    return space(optuna.trial.FixedTrial(study.best_params)), study
