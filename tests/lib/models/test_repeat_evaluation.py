"""Evaluation when people consume the same items again: the discovery and the repeat settings, the
repeat share in the report, BuyAgain, and the champion chosen on the configured setting.

The fixture is a small grocery-like log written here: every user buys their own few staples again
most weeks (staples have no metadata) and now and then tries something new from their own aisle
(items of one category), so the user's own history wins the repeat setting and says nothing in the
discovery setting, where a content model that knows the aisle wins.
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from recsys_assets.contract.settings import Settings
from recsys_assets.lib.evaluation import splits as S
from recsys_assets.lib.models.base import ProtocolData
from recsys_assets.lib.models.buy_again import BuyAgainModel
from recsys_assets.lib.models.candidates import fit_candidate, native_model
from recsys_assets.lib.models.fitting import (
    DISCOVERY,
    REPEAT,
    effective_target,
    evaluate_settings,
    metric_value,
    prepare,
    rank_models,
    repeat_share,
    serving_artifact,
)
from recsys_assets.lib.reports.evaluation_report import render_evaluation_report

from .checkerboard import checkerboard

N_USERS, N_STAPLES, STAPLES_PER_USER, AISLES, PER_AISLE, WEEKS = 100, 40, 4, 20, 40, 30


def basket_log(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2024-01-01", tz="UTC")
    rows = []
    for u in range(N_USERS):
        staples = rng.choice(N_STAPLES, STAPLES_PER_USER, replace=False)
        aisle = u % AISLES
        for week in range(WEEKS):
            when = start + pd.Timedelta(weeks=week, hours=int(rng.integers(0, 100)))
            for s in staples[rng.random(STAPLES_PER_USER) < 0.7]:
                rows.append((f"u{u}", f"staple{s}", when))
            if rng.random() < 0.5:
                rows.append((f"u{u}", f"aisle{aisle}-{rng.integers(PER_AISLE)}", when + pd.Timedelta(minutes=1)))
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    inter["event_type"], inter["value"], inter["weight"] = "purchase", 1.0, 1.0
    inter["timestamp"] = inter["timestamp"].astype("datetime64[us, UTC]")
    staple_ids = [f"staple{s}" for s in range(N_STAPLES)]
    aisle_ids = [f"aisle{a}-{i}" for a in range(AISLES) for i in range(PER_AISLE)]
    items = pd.DataFrame(
        {
            "item_id": staple_ids + aisle_ids,
            "title": "",
            "categories": [""] * N_STAPLES + [f"Aisle{a}" for a in range(AISLES) for _ in range(PER_AISLE)],
            "text": "",
            "year": pd.array([pd.NA] * (N_STAPLES + len(aisle_ids)), dtype="Int32"),
        }
    )
    return inter, items, pd.DataFrame({"user_id": [f"u{u}" for u in range(N_USERS)]})


@functools.cache
def baskets() -> ProtocolData:
    return prepare(*basket_log(), S.TEMPORAL)


@functools.cache
def results() -> pd.DataFrame:
    pdata = baskets()
    frames = []
    for name in ("BuyAgain", "Popularity", "Content"):
        cand = fit_candidate(native_model(name), pdata)
        frames.append(evaluate_settings(cand.scores, pdata, cand.name))
    return pd.concat(frames, ignore_index=True)


def ndcg(model: str, setting: str) -> float:
    return metric_value(results(), model, "ndcg", 10, S.TEMPORAL, setting=setting)


def test_own_history_scores_near_zero_on_discovery_and_high_on_repeat() -> None:
    share = repeat_share(baskets())
    assert 0.6 < share < 1.0
    assert set(results()["setting"]) == {DISCOVERY, REPEAT}
    assert ndcg("BuyAgain", DISCOVERY) < 0.05
    assert ndcg("BuyAgain", REPEAT) > 0.7
    # in the discovery setting the user's own items are neither shown nor positives
    assert ndcg("Content", DISCOVERY) > 4 * ndcg("BuyAgain", DISCOVERY)
    assert (results()["repeat_share"] == share).all()


def test_the_report_shows_both_settings_and_the_repeat_share() -> None:
    html = render_evaluation_report(
        results(), target=REPEAT, failed=[{"model": "X", "protocol": "temporal", "error": "E"}]
    )
    share = repeat_share(baskets())
    assert f"{share:.1%} of test positives are items the user had before" in html
    assert "temporal split, discovery setting" in html and "temporal split, repeat setting" in html
    assert "chosen on <b>repeat</b>" in html
    assert "Failed candidates" in html


def test_the_configured_setting_picks_the_champion() -> None:
    assert rank_models(results(), DISCOVERY)["model"].iloc[0] == "Content"
    ranked = rank_models(results(), REPEAT)
    assert ranked["model"].iloc[0] == "BuyAgain"
    assert ranked["value"].iloc[0] == pytest.approx(ndcg("BuyAgain", REPEAT))
    blended = rank_models(results(), "blended").set_index("model")["value"]
    assert blended["Content"] == pytest.approx((ndcg("Content", DISCOVERY) + ndcg("Content", REPEAT)) / 2)
    with pytest.raises(ValueError, match="unknown evaluation target 'buy'"):
        rank_models(results(), "buy")


def test_without_repeats_only_discovery_is_computed() -> None:
    pdata = checkerboard()
    cand = fit_candidate(native_model("Popularity"), pdata)
    res = evaluate_settings(cand.scores, pdata, cand.name)
    assert set(res["setting"]) == {DISCOVERY} and (res["repeat_share"] == 0).all()
    assert effective_target(res, REPEAT, protocol="random") == DISCOVERY
    assert "only the <b>discovery</b> setting is computed" in render_evaluation_report(res)


def test_a_table_without_the_setting_column_reads_as_discovery() -> None:
    old = results()[results()["setting"] == DISCOVERY].drop(columns=["setting", "repeat_share"])
    assert metric_value(old, "Content", "ndcg", 10, S.TEMPORAL) == ndcg("Content", DISCOVERY)
    assert np.isnan(metric_value(old, "Content", "ndcg", 10, S.TEMPORAL, setting=REPEAT))
    assert rank_models(old, REPEAT)["model"].iloc[0] == "Content"  # no repeat rows: discovery decides


def test_buy_again_serves_what_it_evaluates_and_lives_in_the_hybrid() -> None:
    pdata = baskets()
    cand = fit_candidate(BuyAgainModel(), pdata)
    art = serving_artifact(cand, pdata.data, "baskets")
    users = np.arange(pdata.data.n_users)
    np.testing.assert_array_equal(art.scorer.score(art.history, users), cand.scores(users))
    # a live purchase of a new item joins the user's own list at once (undecayed)
    hist = art.history[[0]]
    fresh = np.setdiff1d(np.arange(pdata.data.n_items), hist.indices)[0]
    idx = np.append(hist.indices, fresh)
    top = art.scorer.topk_one(idx, np.append(hist.data, 1.0).astype(np.float32), len(idx), user=0)
    assert fresh in top
    hybrid = fit_candidate(native_model("Hybrid", repeat=True), pdata)
    assert "buy_again" in hybrid.model.scorer.components
    res = evaluate_settings(hybrid.scores, pdata, "Hybrid")
    assert metric_value(res, "Hybrid", "ndcg", 10, S.TEMPORAL, setting=REPEAT) > 0.5


def test_evaluation_target_is_strict() -> None:
    assert Settings().evaluation_target == DISCOVERY
    with pytest.raises(ValidationError, match=r"discovery.*repeat.*blended"):
        Settings(evaluation_target="buy_again")


def test_the_champion_refit_keeps_buy_again() -> None:
    """Promotion refits the chosen model on every event: BuyAgain, and a hybrid evaluated with it, keep it."""
    from recsys_assets.lib.models.refit import refit_artifact, refit_winner

    tables = basket_log()
    art = refit_artifact("BuyAgain", *tables, tuned={}, budget="smoke", seed=1)
    assert (
        list(art.scorer.components) == ["buy_again"]
        and art.history.nnz == tables[0].groupby(["user_id", "item_id"]).ngroups
    )
    hybrid = refit_artifact("Hybrid", *tables, tuned={}, budget="smoke", seed=1, hybrid_repeat=True)
    assert "buy_again" in hybrid.scorer.components
    # the ranking's row refitted as promotion does: BuyAgain blended because the evaluated hybrid had it
    row = pd.Series({"model": "Hybrid", "budget": "smoke", "collaborative": "", "ndcg@10": 0.5})
    promoted = refit_winner(row, *tables, tuned={}, seed=1, reference=hybrid)
    assert promoted.model_name == "Hybrid" and "buy_again" in promoted.scorer.components
    assert "buy_again" not in refit_winner(row, *tables, tuned={}, seed=1).scorer.components


def test_a_split_where_every_test_positive_is_a_repeat_is_judged_on_repeat() -> None:
    inter, items, users = basket_log(1)
    # the latest weeks (beyond the test cut) hold only staples the users bought before: nothing to discover
    t0, t1 = inter["timestamp"].min(), inter["timestamp"].max()
    last = inter["timestamp"] >= t0 + (t1 - t0) * 0.75
    inter = inter[~(last & inter["item_id"].str.startswith("aisle"))].reset_index(drop=True)
    pdata = prepare(inter, items, users, S.TEMPORAL)
    assert repeat_share(pdata) == 1.0
    cand = fit_candidate(native_model("BuyAgain"), pdata)
    res = evaluate_settings(cand.scores, pdata, cand.name)
    assert set(res["setting"]) == {REPEAT}
    assert effective_target(res, DISCOVERY) == REPEAT
    assert metric_value(res, "BuyAgain", "ndcg", 10, S.TEMPORAL, setting=REPEAT) > 0.5


def test_the_half_life_search_scores_a_batch_of_users_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    import recsys_assets.lib.evaluation.batched as batched
    import recsys_assets.lib.models.buy_again as buy_again
    from recsys_assets.lib.evaluation.batched import EvaluationConfig, batch_size

    pdata = baskets()
    whole = BuyAgainModel().fit(pdata).half_life_days
    rows: list[int] = []
    score_many = buy_again.Component.score_many

    def recorded(component, history, user_idx):  # type: ignore[no-untyped-def]
        rows.append(history.shape[0])
        return score_many(component, history, user_idx)

    monkeypatch.setattr(buy_again.Component, "score_many", recorded)
    # 1 MB of float32 scores holds every user of this small log: 7 users a batch instead
    monkeypatch.setattr(buy_again, "DEFAULT_EVALUATION", EvaluationConfig(batch_memory_mb=1))
    assert batch_size(pdata.data.n_items, 1) > 7
    monkeypatch.setattr(batched, "batch_size", lambda n_items, memory_mb: 7 if memory_mb == 1 else 1 << 30)
    assert BuyAgainModel().fit(pdata).half_life_days == whole
    validated = int((np.diff(pdata.valid_truth.indptr) > 0).sum())
    assert validated > 7 and max(rows) == 7
    assert sum(rows) == validated * len(BuyAgainModel().half_lives)


def test_the_settings_share_one_scoring_pass_and_equal_separate_evaluations() -> None:
    from recsys_assets.lib.models.fitting import evaluate_model

    pdata = baskets()
    cand = fit_candidate(BuyAgainModel(), pdata)
    scored: list[int] = []

    def score(rows: np.ndarray) -> np.ndarray:
        scored.extend(rows.tolist())
        return cand.scores(rows)

    together = evaluate_settings(score, pdata, "BuyAgain")
    # every user with a test positive in either setting is scored once
    assert sorted(scored) == sorted(set(scored)) and len(scored) == int((np.diff(pdata.test_truth.indptr) > 0).sum())
    for setting in (DISCOVERY, REPEAT):
        alone = evaluate_model(cand.scores, pdata, "BuyAgain", setting=setting)
        got = together[together["setting"] == setting].drop(columns="repeat_share").reset_index(drop=True)
        pd.testing.assert_frame_equal(got, alone.reset_index(drop=True))


def test_popularity_lists_equal_its_ranked_scores_in_both_settings() -> None:
    pdata = baskets()
    cand = fit_candidate(native_model("Popularity"), pdata)
    listed = evaluate_settings(cand.scores, pdata, cand.name, lists_fn=cand.lists_fn)
    assert set(listed["setting"]) == {"discovery", "repeat"}
    pd.testing.assert_frame_equal(listed, evaluate_settings(cand.scores, pdata, cand.name), check_exact=True)


def test_the_promotion_check_judges_the_hybrid_the_promotion_would_serve(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On events after the champion's data, the check refits the challenger on the champion's data: a hybrid
    evaluated with BuyAgain is refitted with it, as the promotion refits it, not without."""
    from recsys_assets.contract.artifact import write_to_storage
    from recsys_assets.contract.storage import Storage
    from recsys_assets.defs import checks
    from recsys_assets.lib.models.refit import refit_artifact

    inter, items, users = basket_log()
    store = Storage.from_uri(str(tmp_path))
    cut = inter["timestamp"].sort_values().iloc[-200]
    old = inter[inter["timestamp"] < cut]
    champion = refit_artifact("Popularity", old, items, users, tuned={}, budget="smoke", seed=1)
    write_to_storage(champion, store, "artifacts", "champion")
    evaluated = refit_artifact("Hybrid", inter, items, users, tuned={}, budget="smoke", seed=1, hybrid_repeat=True)
    write_to_storage(evaluated, store, "candidates", "Hybrid")
    judged = []
    monkeypatch.setattr(checks, "_artifact_value", lambda art, pdata, target: judged.append(art) or 0.0)
    current = {"path": ["artifacts", "champion"], "data_until": old["timestamp"].max().isoformat()}
    row = pd.Series({"model": "Hybrid", "budget": "smoke", "collaborative": ""})
    _, _, compared_on = checks._challenger_against_champion(store, row, current, inter, items, users)
    assert "after the champion's data" in compared_on
    challenger = judged[1]
    assert challenger.model_name == "Hybrid" and "buy_again" in challenger.scorer.components
