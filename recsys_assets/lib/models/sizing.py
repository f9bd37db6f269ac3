"""How much memory and time a candidate will take, from the data's shape alone, before it trains.

`estimate` is a small cost model per model family (what it allocates and how its work grows with
users, items, interactions, factors and neighbours); `check` compares it with the limits and returns
the reason a candidate is refused, so the pipeline skips it with that reason instead of being
OOM-killed half way. The constants were calibrated on this machine against measured peak RSS and
wall time (docs/benchmarks.md, "Models that scale"): they are rough (within ~2x), and err high. The time
constants were measured again after the evaluation got faster ("The plan recalibrated (2026-12-04)"):
each candidate's step per split within ~1.6x of the measured one at 1M events, and at most 10% below it.

EASE (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019) is the one model whose
memory grows with items squared: it inverts a dense item x item Gram matrix. It is refused outright
above `Limits.ease_max_items` (`refuse_dense`), whatever the memory budget says.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import scipy.sparse as sp

from recsys_assets.lib.evaluation.batched import DEFAULT_EVALUATION, EvaluationConfig, batch_size
from recsys_assets.lib.models.blend_search import MEMORY_MB, PER_PART
from recsys_assets.lib.models.native import HybridModel

GB = 1e9
# EASE holds ~3 dense float64 item x item matrices (Gram, inverse, weights): 20k items = 9.6 GB.
EASE_MAX_ITEMS = 20_000
# The process before any model: Python, pandas, torch when loaded, the interactions and their splits.
BASE_BYTES = 0.8 * GB
BYTES_PER_EVENT = 600  # interactions table, both splits' copies, the training matrix
# One batch of dense scores (float32) as the batched evaluation builds it (`evaluation.batched`), and one copy.
SCORE_BYTES_PER_CELL = 8
# RecBole's full-sort validation and test, per user x item cell: its score matrix, the masked copy and
# the collector's concatenated batches. At 48k users x 85k items Pop was OOM-killed at 22.9 GB (issue 16).
# It only runs below `EvaluationConfig.recbole_collector_cells`; above, RecBole is validated in batches.
RECBOLE_EVAL_BYTES_PER_CELL = 8
RECBOLE_EVAL_SECONDS_PER_CELL = 3e-9
# RecBole's ItemKNN keeps `pred_mat = interactions x W` as a LIL matrix (Python lists of Python numbers, ~70
# bytes an entry). Popular items sit in nearly every item's K neighbours (hubness), so W's rows for them are
# nearly full and a user's row with one popular item is nearly dense: charged as users x items entries. At
# 47.6k users x 100k items (1M synthetic events) it passed 20 GB within two minutes of starting (docs/benchmarks.md).
RECBOLE_ITEMKNN_BYTES_PER_CELL = 70
RECBOLE_SECONDS_PER_EVENT_EPOCH = {"BPR": 4e-6, "NeuMF": 2e-5, "LightGCN": 4e-5, "MultiVAE": 3e-6, "SASRec": 2e-4}
# implicit's loops, per unit of work on one thread; measured on the 1M-event / 100k-item synthetic log
# (docs/benchmarks.md, "The plan recalibrated (2026-12-04)"), a split on 2 threads: ALS 4.7-12.4 s, BPR
# 9.8-19.6 s, item-item 0.5-1.7 s (the higher figures in a run on a busier machine)
ALS_SECONDS = 7e-9  # per (interaction x factor + row x factor^2) per iteration
BPR_SECONDS = 8e-9  # per interaction x factor per iteration
KNN_SECONDS = 1e-7  # per co-occurring item pair (sum over users of their items squared)
# What every candidate's step pays per split besides its model, per training event: the split cut again
# in the step, the metrics and their slices, the results saved. Popularity's whole step, which is nearly
# only this: 1.7-3.1 s a split at 1M events (read 1.3-2.4x high), 37 s at 10M (read 1.1x high).
STEP_SECONDS_PER_EVENT = 5e-6
# Scoring and ranking an evaluated user over every item, twice (validation and test; the discovery and
# repeat settings share one pass), per user x item cell. The dense scorers (ALS, BPR, RecBole's models)
# pay the product and `top_k_wide` over float scores: ALS's evaluation took 25-30 s a split at 10,000 users
# x 100k items (1M log) on a busy machine and about 5 s on a quiet one; the constant follows the busy runs,
# so the dense scorers read up to ~3.8x high on a quiet machine. The others are batched (`score_many`) and
# cheaper per cell, measured on the same log: item-item and BuyAgain (sparse products, rows mostly tied at
# zero), Content (dense cosines) and the Hybrid (its parts standardised and blended row by row).
# Popularity's lists come from one order (`native.popularity_lists`): nothing per cell.
SCORE_SECONDS_PER_CELL = 3.2e-8
EVAL_SECONDS_PER_CELL = {
    "Popularity": 0.0,
    "ItemItemCosine": 6e-9,
    "ItemItemBM25": 6e-9,
    "BuyAgain": 6e-9,
    "Content": 7e-9,
    "Hybrid": 7e-9,
}
# ... and per evaluated user, where the scores are standardised or normalised a row at a time: 6e-4 s a user
# and 7e-9 a cell put the Hybrid's evaluation at 13 s a split at 100k items (measured 11-14) and 76 s at 1M
# items (measured 65-73)
EVAL_SECONDS_PER_USER = {"Content": 6e-4, "Hybrid": 6e-4}
# Content's item profiles, per catalog item (0.4-1.2 s at 100k items; with popularity's, 6 s at 1M)
CONTENT_SECONDS_PER_ITEM = 1e-5
# BuyAgain's half-life search scores the evaluation's user sample once per half-life, per user x item cell
# (4 half-lives: 3.8-4.4 s a split at 10,000 users x 100k items)
BUY_AGAIN_SECONDS_PER_CELL = 1.2e-9
BUY_AGAIN_HALF_LIVES = 4
# The Hybrid's blend search (`native.HybridModel`'s defaults): at most this many validation users and
# users x items per component, standardised in float64, and at most this many blends scored.
HYBRID_TUNE_USERS = 5_000
HYBRID_TUNE_CELLS = 10_000_000
HYBRID_CANDIDATE_CELLS = HybridModel.candidate_cells  # above the candidates threshold: users x items scored
HYBRID_CANDIDATE_USERS = min(HYBRID_TUNE_USERS, HybridModel.candidate_users)  # ... and users tuned on
HYBRID_MAX_TRIALS = 400
HYBRID_PARTS = 4  # collaborative, content, popularity (and BuyAgain in the repeat setting)
# above this many items the search ranks each user's candidates (`blend_search`)
HYBRID_CANDIDATES_ABOVE = HybridModel.candidates_above
HYBRID_PER_PART, MEMORY_MB_BLEND = PER_PART, MEMORY_MB
# Above the threshold, building the candidates, per tuning user x catalog item (every component together:
# popularity proposes from its one order and item-item from its stored scores, the dense parts are scored
# and standardised), and one trial per tuning user x candidate (`HYBRID_PARTS x HYBRID_PER_PART`). Both
# searches (half-life and blend) took 6.3-8.8 s a split at 2,500 users x 100k items (1M log) and 28-38 s
# at 2,000 users x 1M items (10M log): the candidates, not the trials, grow with the catalog.
HYBRID_CANDIDATE_SECONDS_PER_CELL = 1.8e-8
HYBRID_TRIAL_SECONDS_PER_CELL = 5e-9

# admitted before the others whatever the comparison's time budget (`within_budget`)
ADMITTED_FIRST = ("Hybrid", "Popularity")

RECBOLE = ("Pop", "ItemKNN", "EASE", "BPR", "NeuMF", "LightGCN", "MultiVAE", "SASRec", "NGCF")


@dataclass(frozen=True)
class DataShape:
    """What the estimates read: users, items, distinct user-item pairs, events, the sum over users of their
    distinct items squared (the item-item work; log-normal activity makes it far above nnz^2/users), and the
    users with test positives (the ones the evaluation scores; None: every user)."""

    n_users: int
    n_items: int
    nnz: int
    n_events: int
    pair_work: float
    evaluated_users: int | None = None

    @classmethod
    def of(cls, matrix: sp.csr_matrix, n_events: int | None = None, evaluated_users: int | None = None) -> DataShape:
        """The shape of a users x items training matrix (`n_events` defaults to its non-zeros)."""
        per_user = np.diff(sp.csr_matrix(matrix).indptr).astype(np.float64)
        return cls(
            n_users=int(matrix.shape[0]),
            n_items=int(matrix.shape[1]),
            nnz=int(matrix.nnz),
            n_events=int(matrix.nnz if n_events is None else n_events),
            pair_work=float((per_user**2).sum()),
            evaluated_users=evaluated_users,
        )

    @property
    def with_truth(self) -> int:
        """Users with test positives (every user when unknown)."""
        return self.n_users if self.evaluated_users is None else min(self.evaluated_users, self.n_users)


@dataclass(frozen=True)
class Limits:
    """The budget each candidate must fit: peak memory of the training process, minutes per candidate, the
    minutes all candidates of one split may take together, the largest catalog EASE may densify, and how
    candidates are evaluated (`evaluation`: the batch memory, the user sample, the size above which RecBole
    is validated in batches)."""

    max_memory_gb: float = 16.0
    max_minutes: float = 30.0
    comparison_minutes: float = 0.0  # this split's share of the comparison's time budget (0: none)
    ease_max_items: int = EASE_MAX_ITEMS
    evaluation: EvaluationConfig = DEFAULT_EVALUATION


@dataclass(frozen=True)
class Estimate:
    """A candidate's estimated peak memory and training time, and why it is refused (None: it fits)."""

    model: str
    memory_gb: float
    minutes: float
    reason: str | None = None

    @property
    def fits(self) -> bool:
        return self.reason is None


def _model_bytes_and_seconds(
    model: str, s: DataShape, *, threads: int, epochs: int, factors: int, neighbours: int
) -> tuple[float, float]:
    """Bytes the model itself allocates at its peak, and seconds of training."""
    per_core = max(threads, 1)
    rows = s.n_users + s.n_items
    matrix = s.nnz * 12.0  # one CSR copy (float32 data, int32 indices, indptr aside)
    if model in ("Pop", "Popularity"):
        return matrix, s.n_events * 2e-7
    if model == "Content":
        return matrix + s.n_items * 400.0, s.n_items * CONTENT_SECONDS_PER_ITEM
    if model == "ALS":
        work = s.nnz * factors + rows * factors**2
        return 3 * matrix + 3 * rows * factors * 4.0, epochs * work * ALS_SECONDS / per_core
    if model == "ImplicitBPR":
        return 3 * matrix + 3 * rows * (factors + 1) * 4.0, epochs * s.nnz * factors * BPR_SECONDS / per_core
    if model in ("ItemItemCosine", "ItemItemBM25", "ItemKNN"):
        sim = s.n_items * neighbours * 12.0 * 3  # the K-neighbour lists, their COO and CSR forms
        dense_rows = per_core * s.n_items * 16.0  # one dense accumulator per thread
        seconds = s.pair_work * KNN_SECONDS / (1 if model == "ItemKNN" else per_core)
        if model == "ItemKNN":  # RecBole's users x items prediction matrix, as Python lists
            sim += float(s.n_users) * s.n_items * RECBOLE_ITEMKNN_BYTES_PER_CELL
        return 3 * matrix + sim + dense_rows, seconds
    if model == "EASE":
        return 3 * 8.0 * s.n_items**2, (s.n_items / 1000.0) ** 3 * 0.15
    # the rest: embeddings (and their Adam moments), the memory figure RecBole's models were calibrated with,
    # which BuyAgain and the Hybrid are charged too; their times are their own, RecBole's are per-epoch work
    emb = 4 * rows * max(factors, 64) * 4.0
    if model == "BuyAgain":  # its time is its half-life search over the evaluation's user sample (`estimate`)
        return 3 * matrix + emb, 0.0
    if model == "Hybrid":  # its parts' training: content and popularity (the collaborative part is given)
        return 3 * matrix + emb, s.n_items * CONTENT_SECONDS_PER_ITEM + s.n_events * 2e-7
    return 3 * matrix + emb, epochs * s.n_events * RECBOLE_SECONDS_PER_EVENT_EPOCH.get(model, 1e-5)


def estimate(
    model: str,
    shape: DataShape,
    *,
    threads: int = 1,
    epochs: int | None = None,
    factors: int | None = None,
    neighbours: int = 100,
    evaluation: EvaluationConfig = DEFAULT_EVALUATION,
) -> Estimate:
    """Peak memory (GB) and minutes of one candidate: the pipeline's own data, the model's training, and its
    evaluation in batches of users (`evaluation`): memory is one batch of scores (batch x items x 4 bytes
    <= `batch_memory_mb`), time grows with the evaluated users (those with test positives, at most
    `evaluation.users`). RecBole's own full-sort collector is charged only at or below
    `evaluation.recbole_collector_cells`; above, RecBole is validated every epoch through the batched path."""
    if epochs is None:
        epochs = {"ALS": 15, "ImplicitBPR": 100}.get(model, 1)
    if factors is None:  # the models' defaults (`implicit_cf`, `tuning.STANDARD`)
        factors = {"ALS": 32}.get(model, 64)
    model_bytes, seconds = _model_bytes_and_seconds(
        model, shape, threads=threads, epochs=epochs, factors=factors, neighbours=neighbours
    )
    evaluated = min(shape.with_truth, evaluation.users)
    rows = min(batch_size(shape.n_items, evaluation.batch_memory_mb), max(evaluated, 1))
    scoring = float(rows) * shape.n_items * SCORE_BYTES_PER_CELL
    eval_cells = float(evaluated) * shape.n_items
    if model == "Hybrid" and shape.n_items > HYBRID_CANDIDATES_ABOVE:  # the search over each user's candidates
        tune_rows = min(HYBRID_CANDIDATE_USERS, HYBRID_CANDIDATE_CELLS // max(shape.n_items, 1), evaluated)
        tune_cells = float(tune_rows) * HYBRID_PARTS * HYBRID_PER_PART
        scoring += (HYBRID_PARTS + 2) * tune_cells * 8.0 + MEMORY_MB_BLEND * 2**20
        seconds += HYBRID_MAX_TRIALS * tune_cells * HYBRID_TRIAL_SECONDS_PER_CELL
        seconds += float(tune_rows) * shape.n_items * HYBRID_CANDIDATE_SECONDS_PER_CELL  # the candidates
    elif model == "Hybrid":  # the blend search: each component's standardised scores (float64) and their sum
        tune_rows = min(HYBRID_TUNE_USERS, HYBRID_TUNE_CELLS // max(shape.n_items, 1), evaluated)
        tune_cells = float(tune_rows) * shape.n_items
        scoring += (HYBRID_PARTS + 1) * tune_cells * 8.0
        seconds += HYBRID_MAX_TRIALS * tune_cells * SCORE_SECONDS_PER_CELL / 2
    if model in RECBOLE:
        if eval_cells <= evaluation.recbole_collector_cells:  # RecBole's collector, every epoch and the test
            full = float(shape.with_truth) * shape.n_items
            scoring = max(scoring, full * RECBOLE_EVAL_BYTES_PER_CELL)
            seconds += (epochs + 1) * full * RECBOLE_EVAL_SECONDS_PER_CELL
        else:  # validated every epoch in batches (`RecBoleRecommender.validated_in_batches`)
            seconds += epochs * eval_cells * SCORE_SECONDS_PER_CELL / 2
    if model == "BuyAgain":
        seconds += BUY_AGAIN_HALF_LIVES * eval_cells * BUY_AGAIN_SECONDS_PER_CELL
    seconds += eval_cells * EVAL_SECONDS_PER_CELL.get(model, SCORE_SECONDS_PER_CELL)
    seconds += evaluated * EVAL_SECONDS_PER_USER.get(model, 0.0)
    seconds += shape.n_events * STEP_SECONDS_PER_EVENT
    total = BASE_BYTES + shape.n_events * BYTES_PER_EVENT + model_bytes + scoring
    return Estimate(model=model, memory_gb=total / GB, minutes=seconds / 60.0)


def refuse_dense(model: str, n_items: int, max_items: int = EASE_MAX_ITEMS) -> str | None:
    """Why `model` must not densify an item x item matrix of `n_items` (None: it may)."""
    if model != "EASE" or n_items <= max_items:
        return None
    need = 3 * 8.0 * n_items**2 / GB
    return (
        f"EASE refused: {n_items:,} items > ease_max_items={max_items:,} (its dense item x item matrices need "
        f"~{need:,.0f} GB); use ItemItemCosine/ItemItemBM25 (sparse K neighbours) or raise "
        "RECSYS_LIMITS__EASE_MAX_ITEMS"
    )


def check(est: Estimate, limits: Limits, n_items: int | None = None) -> Estimate:
    """`est` with the reason it is refused under `limits` (None when it fits)."""
    reasons = []
    dense = refuse_dense(est.model, n_items or 0, limits.ease_max_items)
    if dense:
        reasons.append(dense)
    if est.memory_gb > limits.max_memory_gb:
        reasons.append(f"estimated peak memory {est.memory_gb:,.1f} GB > max_memory_gb={limits.max_memory_gb:g}")
    if est.minutes > limits.max_minutes:
        reasons.append(f"estimated training {est.minutes:,.1f} min > max_minutes={limits.max_minutes:g}")
    return Estimate(est.model, est.memory_gb, est.minutes, "; ".join(reasons) or None)


def plan(
    models: list[str],
    shape: DataShape,
    limits: Limits,
    *,
    threads: int = 1,
    epochs: dict[str, int] | None = None,
) -> list[Estimate]:
    """Every model's estimate, checked one by one and then against the split's time budget: the ones with a
    reason are skipped."""
    epochs = epochs or {}
    checked = [
        check(
            estimate(m, shape, threads=threads, epochs=epochs.get(m), evaluation=limits.evaluation),
            limits,
            shape.n_items,
        )
        for m in models
    ]
    return within_budget(checked, limits.comparison_minutes)


def within_budget(estimates: list[Estimate], minutes: float) -> list[Estimate]:
    """`estimates` (same order) with the ones the time budget leaves out given a reason. Candidates that fit
    on their own are admitted cheapest first while their estimated minutes add up to at most `minutes`; the
    Hybrid (it blends the others and is the usual champion) and the Popularity baseline (the promotion check
    compares the challenger with it) come first whatever the budget, and so does the cheapest when neither is
    listed, so a comparison always has a candidate. No budget when 0.

    Cheapest first rather than the configured order: at scale the cheap models (implicit's, the native ones)
    are also the ones built for the size, and the budget then buys the most candidates to compare."""
    if minutes <= 0:
        return estimates
    first = {m: i for i, m in enumerate(ADMITTED_FIRST)}
    order = sorted((e for e in estimates if e.fits), key=lambda e: (first.get(e.model, len(first)), e.minutes))
    admitted: set[str] = set()
    spent = 0.0
    for e in order:
        if (admitted and e.model not in first) and spent + e.minutes > minutes:
            break
        admitted.add(e.model)
        spent += e.minutes
    return [
        e
        if not e.fits or e.model in admitted
        else replace(
            e,
            reason=f"over the comparison's time budget: cheaper candidates take {spent:,.1f} of this split's "
            f"{minutes:g} min and this one {e.minutes:,.1f} min more; raise RECSYS_LIMITS__COMPARISON_MINUTES "
            "or name fewer models",
        )
        for e in estimates
    ]
