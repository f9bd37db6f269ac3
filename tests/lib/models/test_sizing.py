"""The size estimator: a candidate over the memory or time budget is refused with the reason, before it trains;
EASE is refused above its item count whatever the budget; the report shows what was skipped and why."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recsys_assets.contract.settings import get_settings
from recsys_assets.lib.evaluation.batched import EvaluationConfig
from recsys_assets.lib.models import catalog, sizing
from recsys_assets.lib.models.candidates import native_candidate
from recsys_assets.lib.models.fitting import evaluate_scores
from recsys_assets.lib.models.recbole_adapter import RecBoleModelConfig
from recsys_assets.lib.models.recbole_recommender import RecBoleRecommender
from recsys_assets.lib.models.tuning import model_config
from recsys_assets.lib.reports.evaluation_report import render_evaluation_report

from .checkerboard import checkerboard

# The shop log: 1M events, 48k users, 85k items; and the 10M / 1M goal size.
SHOP_1M = sizing.DataShape(n_users=48_000, n_items=85_000, nnz=800_000, n_events=1_000_000, pair_work=6e7)
SHOP_10M = sizing.DataShape(n_users=480_000, n_items=1_000_000, nnz=8_000_000, n_events=10_000_000, pair_work=6e8)
# The scale benchmark's 1M-event log (47,619 users, 100k items) as the plan sees its random split, and each
# candidate's step per split measured there (its step's wall time over its two splits), seconds: runs 1 and
# 2 of docs/benchmarks.md, "The plan recalibrated (2026-12-04)" (in its quiet run 3 ALS and ImplicitBPR took less)
BENCH_1M = sizing.DataShape(
    n_users=47_619, n_items=100_000, nnz=587_566, n_events=803_567, pair_work=22_322_742.0, evaluated_users=44_715
)
MEASURED_1M = {
    "Pop": (33.1, 33.1),
    "ALS": (38.3, 40.9),
    "ImplicitBPR": (42.7, 42.7),
    "ItemItemCosine": (7.7, 11.9),
    "ItemItemBM25": (6.8, 9.0),
    "Content": (14.1, 19.4),
    "BuyAgain": (9.6, 11.3),
    "Hybrid": (19.7, 24.0),
}


def test_shape_of_a_matrix_counts_the_item_pair_work() -> None:
    m = sp.csr_matrix(np.array([[1, 1, 0], [1, 1, 1], [0, 0, 0]], dtype=np.float32))
    shape = sizing.DataShape.of(m, n_events=7)
    assert (shape.n_users, shape.n_items, shape.nnz, shape.n_events) == (3, 3, 5, 7)
    assert shape.pair_work == 2**2 + 3**2


def test_ease_is_refused_at_a_shop_catalog_with_the_reason() -> None:
    est = sizing.check(sizing.estimate("EASE", SHOP_1M), sizing.Limits(max_memory_gb=1000.0), SHOP_1M.n_items)
    assert not est.fits
    assert "EASE refused: 85,000 items > ease_max_items=20,000" in est.reason
    assert est.memory_gb > 170  # three dense 85k x 85k float64 matrices
    assert sizing.refuse_dense("EASE", 1_682) is None and sizing.refuse_dense("ALS", 10**7) is None


def test_a_model_over_the_memory_budget_is_refused_and_one_under_it_is_not() -> None:
    limits = sizing.Limits(max_memory_gb=8.0, max_minutes=60.0)
    plan = {e.model: e for e in sizing.plan(["ALS", "ItemItemBM25", "EASE", "Popularity", "BPR"], SHOP_1M, limits)}
    assert plan["ALS"].fits and plan["ItemItemBM25"].fits and plan["Popularity"].fits, plan
    assert not plan["EASE"].fits
    # above the collector threshold RecBole is validated in batches: no users x items block
    assert plan["BPR"].memory_gb < 4, plan["BPR"]
    # the evaluation holds one batch of scores: a batch as large as every user no longer fits in 8 GB
    whole = sizing.Limits(max_memory_gb=8.0, evaluation=EvaluationConfig(batch_memory_mb=100_000))
    everyone = sizing.check(sizing.estimate("ALS", SHOP_1M, evaluation=whole.evaluation), whole, SHOP_1M.n_items)
    assert not everyone.fits and "estimated peak memory" in everyone.reason and "max_memory_gb=8" in everyone.reason
    # with RecBole's full-sort collector allowed at this size, its users x items cells are charged again
    collector = EvaluationConfig(recbole_collector_cells=10**10)
    bpr = sizing.check(sizing.estimate("BPR", SHOP_1M, epochs=60, evaluation=collector), limits, SHOP_1M.n_items)
    assert not bpr.fits and bpr.memory_gb > 30


def test_recbole_itemknn_is_charged_its_users_x_items_prediction_matrix() -> None:
    # RecBole's ItemKNN holds users x items predictions as Python lists: fine on ml-100k, refused at a shop's size
    ml100k = sizing.DataShape(n_users=943, n_items=1_682, nnz=80_000, n_events=100_000, pair_work=2e7)
    assert sizing.check(sizing.estimate("ItemKNN", ml100k), sizing.Limits(), ml100k.n_items).fits
    shop = sizing.check(sizing.estimate("ItemKNN", SHOP_1M), sizing.Limits(), SHOP_1M.n_items)
    assert not shop.fits and "estimated peak memory" in shop.reason
    # implicit's item-item keeps K neighbours per item only
    assert sizing.check(sizing.estimate("ItemItemBM25", SHOP_1M), sizing.Limits(), SHOP_1M.n_items).fits


def test_the_evaluation_memory_is_one_batch_of_scores() -> None:
    small = sizing.estimate("ALS", SHOP_10M, evaluation=EvaluationConfig(batch_memory_mb=64))
    large = sizing.estimate("ALS", SHOP_10M, evaluation=EvaluationConfig(batch_memory_mb=1024))
    # the batch's scores and one copy: 2 x (1024 - 64) MiB more
    assert large.memory_gb - small.memory_gb == pytest.approx(2 * (1024 - 64) * 2**20 / 1e9, rel=0.01)


def test_a_model_over_the_time_budget_is_refused() -> None:
    limits = sizing.Limits(max_memory_gb=1e6, max_minutes=5.0)
    slow = sizing.check(sizing.estimate("ImplicitBPR", SHOP_10M, epochs=1000, threads=1), limits, SHOP_10M.n_items)
    assert not slow.fits and "estimated training" in slow.reason and "max_minutes=5" in slow.reason
    fast = sizing.check(sizing.estimate("ImplicitBPR", SHOP_1M, threads=2), limits, SHOP_1M.n_items)
    assert fast.fits, fast
    # threads divide implicit's training (not the scoring of every user that follows it)
    assert sizing.estimate("ALS", SHOP_10M, threads=2).minutes < sizing.estimate("ALS", SHOP_10M, threads=1).minutes


def test_estimates_grow_with_the_data() -> None:
    for model in ("ALS", "ImplicitBPR", "ItemItemCosine", "Hybrid", "MultiVAE"):
        small, big = sizing.estimate(model, SHOP_1M), sizing.estimate(model, SHOP_10M)
        assert big.memory_gb > small.memory_gb and big.minutes > small.minutes, model


def test_recbole_ease_refuses_a_large_catalog_before_any_work() -> None:
    build = checkerboard()
    model = RecBoleRecommender(RecBoleModelConfig(model="EASE", epochs=1), max_dense_items=10)
    with pytest.raises(MemoryError, match=r"EASE refused: 26 items > ease_max_items=10"):
        model.fit(build)
    assert not hasattr(model, "trained")


def test_settings_carry_the_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS_LIMITS__MAX_MEMORY_GB", "8")
    monkeypatch.setenv("RECSYS_LIMITS__THREADS", "1")
    settings = get_settings()
    assert settings.limits.max_memory_gb == 8.0 and settings.limits.training_threads() == 1
    monkeypatch.setenv("RECSYS_LIMITS__THREADS", "0")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert get_settings().limits.training_threads() == 2


def test_the_report_lists_skipped_models_with_their_reason() -> None:
    build = checkerboard()
    cand = native_candidate("Popularity", build)
    results = evaluate_scores(cand.scores(np.arange(build.data.n_users)), build, "Popularity")
    reason = sizing.refuse_dense("EASE", 100_000)
    skipped = pd.DataFrame([{"model": "EASE", "protocol": "random", "reason": reason}])
    html = render_evaluation_report(results, skipped=skipped)
    assert "Models not trained" in html and "EASE refused: 100,000 items" in html
    assert "Models not trained" not in render_evaluation_report(results)


def test_a_user_sample_bounds_the_scoring_time_at_a_million_items() -> None:
    everyone = sizing.estimate("ALS", SHOP_10M, threads=2, evaluation=EvaluationConfig(users=10**9))
    sample = sizing.estimate("ALS", SHOP_10M, threads=2, evaluation=EvaluationConfig(users=10_000))
    assert everyone.minutes > 60 > sample.minutes
    assert sample.memory_gb <= everyone.memory_gb


def test_only_the_users_with_test_positives_are_scored() -> None:
    few = dataclasses.replace(SHOP_10M, evaluated_users=5_000)
    evaluation = EvaluationConfig(users=10**9)
    assert few.with_truth == 5_000 and SHOP_10M.with_truth == SHOP_10M.n_users
    assert sizing.estimate("ALS", few, evaluation=evaluation).minutes < 30
    assert sizing.estimate("ALS", SHOP_10M, evaluation=evaluation).minutes > 60
    m = sp.csr_matrix(np.eye(4, dtype=np.float32))
    assert sizing.DataShape.of(m, evaluated_users=2).with_truth == 2


def test_recbole_pays_its_collector_only_below_the_batched_validation_threshold() -> None:
    small = sizing.DataShape(n_users=900, n_items=1_700, nnz=80_000, n_events=100_000, pair_work=1e7)
    at = EvaluationConfig(recbole_collector_cells=900 * 1_700, batch_memory_mb=1)
    below = EvaluationConfig(recbole_collector_cells=900 * 1_700 - 1, batch_memory_mb=1)
    collector = sizing.estimate("BPR", small, epochs=100, evaluation=at)
    batched = sizing.estimate("BPR", small, epochs=100, evaluation=below)
    # the collector holds every users x items cell (8 bytes each), the batched path one batch (154 users);
    # the batched path ranks every epoch in Python, slower per cell than RecBole's torch collector
    assert collector.memory_gb - batched.memory_gb == pytest.approx((900 - 154) * 1_700 * 8 / 1e9, rel=0.01)
    assert collector.minutes < batched.minutes
    # the implicit models never go through RecBole's collector
    assert sizing.estimate("ALS", small, evaluation=at) == sizing.estimate("ALS", small, evaluation=below)


def test_the_comparison_budget_admits_the_cheapest_candidates_and_names_why_the_rest_wait() -> None:
    models = ["NeuMF", "ALS", "EASE", "ItemItemCosine", "Popularity", "MultiVAE", "Hybrid", "ImplicitBPR"]
    free = sizing.plan(models, SHOP_1M, sizing.Limits(max_memory_gb=1e6), threads=2)
    minutes = {e.model: e.minutes for e in free}
    # the Hybrid and the Popularity baseline first, then the cheapest
    rest = sorted((e for e in free if e.fits and e.model not in ("Hybrid", "Popularity")), key=lambda e: e.minutes)
    budget = minutes["Hybrid"] + minutes["Popularity"] + rest[0].minutes + rest[1].minutes + 0.01
    planned = sizing.plan(models, SHOP_1M, sizing.Limits(max_memory_gb=1e6, comparison_minutes=budget), threads=2)
    assert [e.model for e in planned] == models  # the configured order, with a verdict each
    admitted = {e.model for e in planned if e.fits}
    assert admitted == {"Hybrid", "Popularity", rest[0].model, rest[1].model}
    assert sum(minutes[m] for m in admitted) <= budget
    for e in planned:
        if e.model == "EASE":  # refused by its item count first, not by the budget
            assert e.reason.startswith("EASE refused")
        elif e.model not in admitted:
            assert "over the comparison's time budget" in e.reason and "RECSYS_LIMITS__COMPARISON_MINUTES" in e.reason
    # the Hybrid and the baseline whatever the budget; without them, the cheapest, so a comparison always has one
    tiny = sizing.Limits(max_memory_gb=1e6, comparison_minutes=1e-6)
    assert {e.model for e in sizing.plan(models, SHOP_1M, tiny, threads=2) if e.fits} == {"Hybrid", "Popularity"}
    others = [m for m in models if m not in ("Hybrid", "Popularity")]
    assert [e.model for e in sizing.plan(others, SHOP_1M, tiny, threads=2) if e.fits] == [rest[0].model]
    # no budget: every candidate that fits on its own
    assert {e.model for e in free if e.fits} == set(models) - {"EASE"}


def test_the_default_budget_keeps_every_ml100k_candidate() -> None:
    # ml-100k's temporal split scores 166 users, the random one all 943: the larger is checked
    ml100k = sizing.DataShape(n_users=943, n_items=1_682, nnz=80_000, n_events=80_000, pair_work=2.0e7)
    share = sizing.Limits(comparison_minutes=get_settings().limits.comparison_minutes / 2)  # two splits
    models = [*catalog.RECBOLE_DEFAULT, *catalog.IMPLICIT, *catalog.NATIVE]
    epochs = {n: int(model_config(n, "standard", 2020, tuned={}).get("epochs", 1)) for n in catalog.RECBOLE_DEFAULT}
    planned = sizing.plan(models, ml100k, share, threads=2, epochs=epochs)
    assert all(e.fits for e in planned), [e.reason for e in planned if not e.fits]


def test_the_estimates_hold_the_step_times_measured_on_the_1m_benchmark_log() -> None:
    # within ~1.5x of the quieter run and never more than 10% below the busier one
    for model, (quiet, busy) in MEASURED_1M.items():
        seconds = 60 * sizing.estimate(model, BENCH_1M, threads=2, epochs=1 if model == "Pop" else None).minutes
        assert 0.9 * busy <= seconds <= 1.65 * quiet, (model, seconds)
    # Popularity's step is nearly only what every step pays per split (1.7-3.1 s here): high, by a few seconds
    assert 3.1 <= 60 * sizing.estimate("Popularity", BENCH_1M, threads=2).minutes <= 6


def test_the_default_budget_admits_every_cheap_candidate_at_1m_events() -> None:
    limits = sizing.Limits(comparison_minutes=get_settings().limits.comparison_minutes / 2)  # two splits
    models = [*catalog.RECBOLE_DEFAULT, *catalog.IMPLICIT, *catalog.NATIVE]
    epochs = {n: int(model_config(n, "standard", 2020, tuned={}).get("epochs", 1)) for n in catalog.RECBOLE_DEFAULT}
    planned = {e.model: e for e in sizing.plan(models, BENCH_1M, limits, threads=2, epochs=epochs)}
    admitted = {m for m, e in planned.items() if e.fits}
    assert {"ALS", "ImplicitBPR", "ItemItemCosine", "ItemItemBM25", "Popularity", "Content", "Hybrid"} <= admitted
    assert "Pop" in admitted and not {"ItemKNN", "EASE"} & admitted
    assert sum(planned[m].minutes for m in admitted) <= limits.comparison_minutes


def test_the_hybrids_search_above_the_threshold_grows_with_its_users_times_the_catalog() -> None:
    # the candidates come from one users x items pass over every component together (popularity from its
    # order, item-item from its stored scores), not one dense pass per part; the trials do not see the catalog
    small = dataclasses.replace(BENCH_1M, evaluated_users=1)  # one user evaluated, so one tuned on
    wide = dataclasses.replace(small, n_items=10 * small.n_items)
    grown = 60 * (sizing.estimate("Hybrid", wide).minutes - sizing.estimate("Hybrid", small).minutes)
    added = wide.n_items - small.n_items
    per_item = (
        sizing.HYBRID_CANDIDATE_SECONDS_PER_CELL  # the tuning user's candidates
        + sizing.EVAL_SECONDS_PER_CELL["Hybrid"]  # the evaluated user's scores
        + sizing.CONTENT_SECONDS_PER_ITEM  # the content part's item profiles
    )
    assert grown == pytest.approx(added * per_item, rel=1e-6)


def test_the_estimates_hold_the_steps_measured_on_the_10m_benchmark_log() -> None:
    # the 10M-event log's random split (476,190 users, 1M items, 8.04M training events); the two candidates
    # the default budget admits there: Popularity 37.2 s and the Hybrid 138.5 s a split (their time estimates
    # read neither the non-zeros nor the item pairs)
    bench = sizing.DataShape(
        n_users=476_190, n_items=1_000_000, nnz=8_043_202, n_events=8_043_202, pair_work=0.0, evaluated_users=447_136
    )
    for model, measured in (("Popularity", 37.2), ("Hybrid", 138.5)):
        seconds = 60 * sizing.estimate(model, bench, threads=2).minutes
        assert 0.9 * measured <= seconds <= 1.5 * measured, (model, seconds)
