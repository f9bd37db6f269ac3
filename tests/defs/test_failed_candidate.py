"""A failing training step keeps what finished: a model that raises on one split is recorded (which model,
which split, the error in plain words) while the other models, the other split and the evaluation report go
on; the step fails, naming every failure, only when nothing could be trained. Native models only, on the small
basket log of `test_repeat_evaluation`, so it runs in seconds."""

from __future__ import annotations

import json
from collections.abc import Callable

import dagster as dg
import pytest

from recsys_assets.contract.settings import Settings
from recsys_assets.contract.storage import Storage
from recsys_assets.defs.definitions import build_definitions
from recsys_assets.defs.training import FAILED_CANDIDATES
from recsys_assets.lib.models import candidates
from tests.lib.models.test_repeat_evaluation import basket_log

pytestmark = pytest.mark.integration  # a Dagster run in process, with MLflow

NATIVE = ["Popularity", "Content", "BuyAgain"]


def train(settings: Settings) -> dg.ExecuteInProcessResult:
    store = Storage.from_settings(settings)
    for name, table in zip(("interactions", "items", "users"), basket_log(), strict=True):
        store.write_table(table, f"{name}.parquet")
    defs = build_definitions(settings)
    job = defs.resolve_implicit_global_asset_job_def()
    config = {"models": [], "native_models": NATIVE, "budget": "smoke"}
    return job.execute_in_process(
        raise_on_error=False,
        asset_selection=[dg.AssetKey("model_candidates"), dg.AssetKey("evaluation_report")],
        run_config={"ops": {"model_candidates": {"config": config}}},
    )


def break_models(monkeypatch: pytest.MonkeyPatch, fails: Callable[[str, str], bool]) -> None:
    real = candidates.native_candidate

    def native_candidate(name, pdata, *args, **kwargs):
        if fails(name, pdata.protocol):
            raise MemoryError(f"{name} needs 9 GB on the {pdata.protocol} split")
        return real(name, pdata, *args, **kwargs)

    monkeypatch.setattr(candidates, "native_candidate", native_candidate)


def test_a_model_that_raises_is_recorded_and_the_rest_is_kept(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    break_models(monkeypatch, lambda name, protocol: name == "Content" and protocol == "temporal")
    settings = settings.model_copy(update={"evaluation_target": "repeat"})
    result = train(settings)
    assert result.success
    store = Storage.from_settings(settings)
    failed = json.loads(store.read_bytes(*FAILED_CANDIDATES))
    assert failed == [
        {"model": "Content", "protocol": "temporal", "error": "MemoryError: Content needs 9 GB on the temporal split"}
    ]
    table = store.read_table("evaluation_report.parquet")
    done = set(map(tuple, table[["model", "protocol"]].drop_duplicates().to_numpy()))
    assert done == {(m, p) for m in NATIVE for p in ("random", "temporal")} - {("Content", "temporal")}
    assert set(table["setting"]) == {"discovery", "repeat"}
    html = store.read_bytes("reports", "evaluation_report.html").decode()
    assert "Failed candidates" in html and "Content needs 9 GB on the temporal split" in html
    assert "chosen on <b>repeat</b>" in html
    report = result.asset_materializations_for_node("evaluation_report")[0]
    assert report.metadata["evaluation_target"].value == "repeat"


def test_the_step_fails_naming_every_failure_when_nothing_could_be_trained(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    break_models(monkeypatch, lambda name, protocol: True)
    result = train(settings)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = str(failure.event_specific_data.error)
    assert "no candidate could be trained and evaluated" in message
    assert "BuyAgain on the temporal split: MemoryError: BuyAgain needs 9 GB on the temporal split" in message
    failed = json.loads(Storage.from_settings(settings).read_bytes(*FAILED_CANDIDATES))
    assert len(failed) == 2 * len(NATIVE)
