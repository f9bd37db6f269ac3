"""The `online_estimates` asset on a small log: one stored live window of lists a Hybrid champion served with
an explored last slot, and the same Hybrid as the candidate."""

from __future__ import annotations

import dataclasses

import dagster as dg
import numpy as np
import pandas as pd

from recsys_assets.contract.artifact import write_to_storage
from recsys_assets.contract.exploration import ExplorationConfig
from recsys_assets.contract.settings import Settings
from recsys_assets.contract.storage import Storage
from recsys_assets.defs.evaluation import online_estimates
from recsys_assets.defs.resources import StorageResource
from recsys_assets.lib import live_windows as live
from recsys_assets.lib import off_policy
from recsys_assets.lib.reports.evaluation_report import _online
from tests.api_support import exploring_log, movielens_artifact

K, DEPTH, SHARE = 10, 40, 0.5


def test_online_estimates_runs_on_a_small_log(settings: Settings) -> None:
    art = movielens_artifact()
    store = Storage.from_uri(settings.storage_uri)
    write_to_storage(art, store, "candidates", "Hybrid")
    # a second candidate the log has never seen, to check it is read and judged too
    write_to_storage(dataclasses.replace(art, model_version="Hybrid-copy"), store, "candidates", "Copy")
    window = exploring_log(art, 400, np.random.default_rng(0), K, DEPTH, SHARE)
    store.write_table(window, live.LIVE_EVENTS, "2026-12-01T1000.parquet")
    inter = pd.DataFrame(
        {
            "user_id": art.user_ids[np.repeat(np.arange(300), np.diff(art.history.indptr[:301]))],
            "item_id": art.item_ids[art.history.indices[: art.history.indptr[300]]],
            "timestamp": pd.Timestamp("1998-01-01", tz="UTC"),
            "weight": art.history.data[: art.history.indptr[300]],
        }
    )
    # clicks here are drawn per impression, not once per user and item
    estimates = {"min_lists": 100, "bootstrap": 200, "once_per_user": False}
    config = settings.model_copy(update={"exploration": ExplorationConfig(estimates=estimates)})
    candidates = pd.DataFrame({"model": ["Hybrid", "Copy", "NotExported"]})
    out = online_estimates(
        context=dg.build_asset_context(),
        settings=config,
        storage=StorageResource(uri=settings.storage_uri),
        model_candidates=candidates,
        interactions=inter,
    )
    table = out.value
    assert out.metadata["lists"].value == 400 and out.metadata["estimated"].value == 2
    header = out.metadata["estimates"].value.splitlines()[0]
    assert [c.strip() for c in header.strip("|").split("|")] == ["model", "dr", "ips", "snips"]
    assert set(table["model"]) == {"Hybrid", "Copy"}
    assert set(table["estimator"]) == set(off_policy.ESTIMATORS)
    assert (table["lists"] == 400).all()
    assert (table["ci_low"] <= table["value"]).all() and (table["value"] <= table["ci_high"]).all()
    hybrid = table[table["model"] == "Hybrid"].set_index("estimator")
    # the candidate is the logging policy's own greedy list: at least 9 of its 10 items were shown
    assert 9.0 <= hybrid.loc["ips", "matched_per_list"] <= 10.0
    # its estimate covers its own logged clicks per list (its greedy list differs in one slot at most)
    logged = hybrid.loc["ips", "logged_value"]
    for name in ("ips", "snips", "dr", "ips_position", "rips"):
        assert hybrid.loc[name, "ci_low"] <= logged <= hybrid.loc[name, "ci_high"], name
    assert "Online estimates" in _online(table)


def test_too_few_lists_give_an_empty_table(settings: Settings) -> None:
    out = online_estimates(
        context=dg.build_asset_context(),
        settings=settings,
        storage=StorageResource(uri=settings.storage_uri),
        model_candidates=pd.DataFrame({"model": ["Hybrid"]}),
        interactions=pd.DataFrame(columns=["user_id", "item_id", "timestamp", "weight"]),
    )
    assert out.value.empty and list(out.value.columns) == list(off_policy.ESTIMATE_COLUMNS)
    assert out.metadata["lists"].value == 0
