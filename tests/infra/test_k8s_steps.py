"""The Kubernetes path of the per-model steps, checked offline: the Helm values select the k8s executor for
the code location's runs, the settings accept what the values set, and (where dagster-k8s is installed) the
executor the definitions build from them validates its configuration."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from recsys_assets.contract.settings import get_settings
from recsys_assets.defs import executors

VALUES = Path(__file__).resolve().parents[2] / "infra" / "k8s" / "dagster-values.yaml"


def deployment_env() -> dict[str, str]:
    values = yaml.safe_load(VALUES.read_text())
    [deployment] = values["dagster-user-deployments"]["deployments"]
    assert deployment["includeConfigInLaunchedRuns"]["enabled"]  # the runs (and their step pods) get this env
    return {e["name"]: str(e["value"]) for e in deployment["env"]}


def test_the_helm_values_run_every_step_in_its_own_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    values = yaml.safe_load(VALUES.read_text())
    # k8s_job_executor's step pods inherit the K8sRunLauncher's image, secrets and resources
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    limits = values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]["containerConfig"]["resources"]
    assert limits["requests"]["cpu"] and limits["limits"]["memory"]
    env = deployment_env()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = get_settings()
    assert settings.executor == "k8s" and settings.executor_max_concurrent == 8
    assert executors.step_threads(settings) is None  # a pod's cores are its own


def test_the_k8s_executor_builds_from_the_helm_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("dagster_k8s", reason="dagster-k8s is in the pipeline extra; not installed here")
    for key, value in deployment_env().items():
        monkeypatch.setenv(key, value)
    executor = executors.build_executor(get_settings())
    assert executor.name == "k8s"
    assert executor.apply_config_mapping({}).value["config"]["max_concurrent"] == 8
