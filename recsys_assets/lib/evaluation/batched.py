"""Top-K lists for many users in bounded memory, the evaluated user sample and confidence intervals.

A model is evaluated through a score function (`score_fn(user_idx) -> len(user_idx) x n_items`):
the users are scored one batch at a time (as many as fit in `batch_memory_mb` of float32 scores),
each batch is ranked at once and only its top-K lists are kept, so memory is the batch's scores plus
n_users x K indices, never a dense n_users x n_items matrix. The metrics are then those of
`metrics.evaluate_topk` on the stacked lists: the result equals ranking the full score matrix exactly,
because every user's row is scored and ranked on its own.

Above `EvaluationConfig.users` evaluated users a fixed, seeded sample is drawn (`sample_users`); the
confidence interval of a per-user mean (NDCG, Recall, ...) is the normal approximation
mean +- z x sd / sqrt(n) over the evaluated users (`mean_ci`), which says how precise a sample is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field
from scipy.stats import norm

from recsys_assets.contract.scoring import topk_from_scores

ScoreFn = Callable[[np.ndarray], np.ndarray]
FLOAT_BYTES = 4  # models score in float32


class EvaluationConfig(BaseModel):
    """How candidates are evaluated at scale (the `eval_*` settings).

    `users`: most users one evaluation scores (all when there are fewer, else a sample seeded by
    `seed`); `batch_memory_mb`: scores held at once (batch_users x n_items x 4 bytes); RecBole models
    whose validation would score more than `recbole_collector_cells` users x items are validated by
    the batched path instead of RecBole's collector; `ci_level`: level of the confidence intervals.
    """

    model_config = ConfigDict(frozen=True)

    users: int = Field(default=10_000, ge=1)
    seed: int = 2020
    batch_memory_mb: int = Field(default=256, ge=1)
    recbole_collector_cells: int = Field(default=25_000_000, ge=0)
    ci_level: float = Field(default=0.95, gt=0, lt=1)


DEFAULT_EVALUATION = EvaluationConfig()


def batch_size(n_items: int, memory_mb: int) -> int:
    """Users per batch so that batch x n_items float32 scores take at most `memory_mb` (at least 1)."""
    return max(1, (memory_mb << 20) // (max(n_items, 1) * FLOAT_BYTES))


def sample_users(users: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """`users` when there are at most `limit`, else a fixed sample of `limit` of them (sorted)."""
    users = np.asarray(users, dtype=np.int64)
    if len(users) <= limit:
        return users
    return np.sort(np.random.default_rng(seed).choice(users, size=limit, replace=False))


def users_with_truth(truth: sp.csr_matrix) -> np.ndarray:
    """Rows of `truth` with at least one positive (the only users any metric counts)."""
    return np.flatnonzero(np.diff(sp.csr_matrix(truth).indptr) > 0)


def ranked_lists(
    score_fn: ScoreFn,
    users: np.ndarray,
    k: int,
    n_items: int,
    exclude: sp.csr_matrix | None = None,
    memory_mb: int = DEFAULT_EVALUATION.batch_memory_mb,
) -> np.ndarray:
    """Top-`k` item indices (len(users) x k, -1 padded) of `score_fn`, one batch of users at a time.

    `exclude` has one row per entry of `users` (items never to rank for that user).
    """
    users = np.asarray(users, dtype=np.int64)
    return ranked_lists_by(score_fn, users, k, n_items, {"": (np.ones(len(users), bool), exclude)}, memory_mb)[""]


def ranked_lists_by(
    score_fn: ScoreFn,
    users: np.ndarray,
    k: int,
    n_items: int,
    rankings: Mapping[str, tuple[np.ndarray, sp.csr_matrix | None]],
    memory_mb: int = DEFAULT_EVALUATION.batch_memory_mb,
) -> dict[str, np.ndarray]:
    """`ranked_lists` for several rankings of one scoring pass: each ranking (by name) takes the `users` of its
    mask and hides its own items (one row per entry of `users`, or None), so a user several rankings take is
    scored once. Each ranking's lists are len(users) x k, -1 for the users it does not take."""
    users = np.asarray(users, dtype=np.int64)
    for name, (member, exclude) in rankings.items():
        if member.shape != (len(users),):
            raise ValueError(f"ranking {name!r}: its mask has shape {member.shape}, expected {(len(users),)}")
        if exclude is not None and exclude.shape != (len(users), n_items):
            raise ValueError(f"exclude has shape {exclude.shape}, expected {(len(users), n_items)}")
    out = {name: np.full((len(users), k), -1, dtype=np.int64) for name in rankings}
    step = batch_size(n_items, memory_mb)
    for start in range(0, len(users), step):
        stop = min(start + step, len(users))
        wanted = {name: np.flatnonzero(member[start:stop]) for name, (member, _) in rankings.items()}
        if not any(len(at) for at in wanted.values()):
            continue
        scores = score_fn(users[start:stop])
        if scores.shape != (stop - start, n_items):
            raise ValueError(f"the score function returned shape {scores.shape}, expected {(stop - start, n_items)}")
        for name, at in wanted.items():
            if not len(at):
                continue
            exclude = rankings[name][1]
            rows = scores if len(at) == stop - start else scores[at]  # no copy when the ranking takes the batch
            out[name][start + at] = topk_from_scores(rows, k, None if exclude is None else exclude[start + at])
    return out


def mean_ci(values: np.ndarray, level: float = DEFAULT_EVALUATION.ci_level) -> tuple[float, float]:
    """Normal-approximation confidence interval of the mean of per-user `values` (NaN with < 2 users)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size < 2:
        return float("nan"), float("nan")
    half = float(norm.ppf(0.5 + level / 2) * values.std(ddof=1) / np.sqrt(values.size))
    mean = float(values.mean())
    return mean - half, mean + half
