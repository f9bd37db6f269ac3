"""The candidate comparison as one step per model: the same table as training every model in one loop (on
ml-100k, fast models, smoke budget), the same again with the steps side by side under the multiprocess
executor, and the executor chosen by the settings."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from recsys_assets.contract.settings import Settings, get_settings
from recsys_assets.contract.storage import Storage
from recsys_assets.defs import executors
from recsys_assets.defs.definitions import INGESTION_JOB, PIPELINE_JOB, build_definitions
from recsys_assets.defs.training import STEP_RESULTS_IO, CandidatesConfig, _fit, evaluation_config
from recsys_assets.lib.evaluation import splits as S
from recsys_assets.lib.models.fitting import DISCOVERY, evaluate_settings, fingerprint, has_repeats, prepare

pytestmark = pytest.mark.integration  # Dagster runs with RecBole and MLflow

CONFIG = {"models": ["Pop", "ItemKNN"], "native_models": ["Popularity", "Content", "Hybrid"], "budget": "smoke"}
CANDIDATES = dg.AssetKey("model_candidates")


def _env(settings: Settings) -> dict[str, str]:
    return {
        "RECSYS_STORAGE_URI": settings.storage_uri,
        "RECSYS_DAGSTER_HOME": settings.dagster_home,
        "RECSYS_EXECUTOR": settings.executor,
        "RECSYS_EXECUTOR_MAX_CONCURRENT": str(settings.executor_max_concurrent),
    }


def candidates_job() -> dg.JobDefinition:
    """The pipeline job, rebuilt from `RECSYS_*` in each step process of a multiprocess run."""
    return build_definitions(get_settings()).resolve_job_def(PIPELINE_JOB)


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """ml-100k ingested once; the environment holds only these settings (the step processes read them)."""
    root = tmp_path_factory.mktemp("steps")
    with pytest.MonkeyPatch.context() as mp:
        for key in list(os.environ):
            if key.startswith("RECSYS_"):
                mp.delenv(key)
        settings = get_settings(
            storage_uri=str(root / "data"), dagster_home=str(root / "dagster"), executor_max_concurrent=2
        )
        for key, value in _env(settings).items():
            mp.setenv(key, value)
        assert build_definitions(settings).resolve_job_def(INGESTION_JOB).execute_in_process().success
        yield settings


def one_loop(settings: Settings) -> pd.DataFrame:
    """The comparison as it was trained before the split: every protocol, every model in order, one process,
    the hybrid blending the best exportable collaborative candidate fitted before it."""
    store = Storage.from_settings(settings)
    inter, items, users = (store.read_table(f"{n}.parquet") for n in ("interactions", "items", "users"))
    config = CandidatesConfig(**CONFIG)
    evaluation = evaluation_config(settings)
    results = []
    for protocol in config.protocols:
        pdata = prepare(inter, items, users, protocol, seed=config.seed)
        repeat = settings.evaluation_target != DISCOVERY and has_repeats(pdata)
        cands = []
        for name in [*config.models, *config.native_models]:
            cand = _fit(name, pdata, cands, config, {}, repeat, evaluation, settings.limits)
            res = evaluate_settings(cand.scores, pdata, cand.name, evaluation)
            res["budget"] = config.budget
            res["collaborative"] = str(cand.params.get("collaborative", ""))
            res["time_mode"] = S.time_mode(inter)
            results.append(res)
            cands.append(cand)
    table = pd.concat(results, ignore_index=True)
    table["dataset_fingerprint"] = fingerprint(inter)
    return table


def candidate_steps(instance: dg.DagsterInstance, run_id: str) -> dict[str, tuple[float, float, int]]:
    """Each successful step of `model_candidates` in a run: (start, end, process id)."""
    start, end = {}, {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is not None and event.step_key and event.step_key.startswith("model_candidates."):
            if event.event_type_value == "STEP_START":
                start[event.step_key] = (entry.timestamp, event.pid)
            elif event.event_type_value == "STEP_SUCCESS":
                end[event.step_key] = entry.timestamp
    return {key: (start[key][0], end[key], start[key][1]) for key in end}


@pytest.fixture(scope="module")
def in_process(ingested: Settings) -> tuple[dg.ExecuteInProcessResult, pd.DataFrame]:
    job = build_definitions(ingested).resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(
        asset_selection=[CANDIDATES], run_config={"ops": {"model_candidates": {"config": CONFIG}}}
    )
    return result, Storage.from_settings(ingested).read_table("model_candidates.parquet")


def test_one_step_per_model_gives_the_one_loop_comparison(ingested: Settings, in_process) -> None:
    result, table = in_process
    assert result.success
    steps = {e.step_key for e in result.all_events if e.event_type_value == "STEP_SUCCESS"}
    assert {k for k in steps if k.startswith("model_candidates.candidate[")} == {
        f"model_candidates.candidate[{m}]" for m in ("Pop", "ItemKNN", "Popularity", "Content")
    }
    assert {"model_candidates.candidate_plan", "model_candidates.hybrid_candidate"} <= set(steps)
    expected = one_loop(ingested)
    pd.testing.assert_frame_equal(table, expected)
    # the Hybrid blended the best exportable collaborative model of the first stage
    hybrid = table[table["model"] == "Hybrid"]
    assert set(hybrid["collaborative"]) <= {"ItemKNN"} and set(hybrid["collaborative"]) != {""}
    store = Storage.from_settings(ingested)
    assert {"Pop", "ItemKNN", "Popularity", "Content", "Hybrid"} <= {p.split("/")[1] for p in store.list("candidates")}
    assert store.list("steps") == []  # the hand-over files are removed with the table stored


def test_the_multiprocess_executor_trains_models_side_by_side_with_the_same_table(ingested: Settings, in_process):
    _, table = in_process
    store = Storage.from_settings(ingested)
    home = Path(ingested.dagster_home) / "multiprocess"
    home.mkdir(parents=True)
    with dg.DagsterInstance.local_temp(str(home)) as instance:
        result = dg.execute_job(
            dg.reconstructable(candidates_job),
            instance=instance,
            asset_selection=[CANDIDATES],
            run_config={"ops": {"model_candidates": {"config": CONFIG}}},
        )
        assert result.success
        steps = candidate_steps(instance, result.run_id)
    first_stage = sorted(v for k, v in steps.items() if k.startswith("model_candidates.candidate["))
    assert len(first_stage) == 4 and len({pid for *_, pid in first_stage}) == 4  # a process per model
    overlapped = any(later[0] < earlier[1] for earlier, later in itertools.pairwise(first_stage))
    assert overlapped, f"no two model steps ran at the same time: {first_stage}"
    pd.testing.assert_frame_equal(store.read_table("model_candidates.parquet"), table)


def test_the_executor_is_chosen_by_the_settings(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    job = build_definitions(settings).resolve_job_def("pipeline_job")
    assert job.executor_def.name == "multiprocess"  # the default: what Dagster runs launched jobs with
    monkeypatch.setattr(executors, "cores", lambda: 4)
    two = settings.model_copy(update={"executor_max_concurrent": 2})
    executor = build_definitions(two).resolve_job_def("pipeline_job").executor_def
    assert executor.apply_config_mapping({}).value["config"]["max_concurrent"] == 2
    assert executors.step_threads(two) == 2  # 4 cores, 2 steps at once
    assert executors.step_threads(settings) == 4  # the default: one step at a time, with every core
    per_core = settings.model_copy(update={"executor_max_concurrent": 0})
    assert executors.step_threads(per_core) == 1  # one step per core
    one = settings.model_copy(update={"executor": "in_process"})
    assert build_definitions(one).resolve_job_def("pipeline_job").executor_def.name == "in_process"
    assert executors.step_threads(one) is None
    k8s = settings.model_copy(update={"executor": "k8s"})
    try:
        import dagster_k8s  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"dagster-k8s==0\.29\.27"):
            build_definitions(k8s)
    else:
        assert build_definitions(k8s).resolve_job_def("pipeline_job").executor_def.name == "k8s"
    assert executors.step_threads(k8s) is None  # a pod has its cores to itself
    assert STEP_RESULTS_IO in build_definitions(settings).resources


def test_thread_limits_hold_inside_the_block_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from threadpoolctl import threadpool_info

    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    with executors.thread_limits(1):
        assert os.environ["OMP_NUM_THREADS"] == "1" and os.environ["MKL_NUM_THREADS"] == "1"
        assert all(pool["num_threads"] == 1 for pool in threadpool_info())
    assert os.environ["OMP_NUM_THREADS"] == "7"
    with executors.thread_limits(None):
        assert os.environ["OMP_NUM_THREADS"] == "7"
