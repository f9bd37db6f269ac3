"""The API's and the console's images without Docker: a fresh virtual environment per role, built the
way its Dockerfile builds the image (the lock with `--no-deps`, binary wheels only, then the project
with `--no-deps`, then `pip check`), must hold everything the role imports and nothing of the training
stack, and must run: the API serves a champion and passes the deployment's smoke test, the console
answers its health route and renders every page with neither Dagster nor MLflow installed or imported.

The environments are cached under the system's temporary folder, keyed by pyproject.toml, the lock
and the interpreter, so a rerun only reinstalls the project (seconds); the first run downloads the
wheels (a minute or two per role).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from recsys_assets.contract.artifact import ServingArtifact, write_to_storage
from recsys_assets.contract.scoring import Component, Scorer
from recsys_assets.contract.settings import get_settings
from recsys_assets.contract.storage import Storage
from tests.conftest import ROOT, free_port, wait_for_port
from tests.infra.test_infra import roles, smoke

pytestmark = pytest.mark.integration

CACHE = Path(tempfile.gettempdir()) / "recsys-infra-venvs"
TRAINING_MODULES = ("torch", "recbole", "ray", "evidently", "optuna", "sklearn")
PROJECT_SOURCES = ("pyproject.toml", "README.md", "recsys_assets", "serving", "console")


def _run(*cmd: str | Path, **kwargs) -> subprocess.CompletedProcess:
    # outside the work tree, or `python -c "import console"` would find the checkout, not the install
    kwargs.setdefault("cwd", tempfile.gettempdir())
    kwargs.setdefault("env", {k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, cmd))}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def project_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project built from the files the Dockerfiles copy (nothing else of the work tree)."""
    src = tmp_path_factory.mktemp("src")
    for name in PROJECT_SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(path, src / name)
    out = tmp_path_factory.mktemp("wheel")
    # this environment's setuptools satisfies the build requirement: no download
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", out, src)
    [wheel] = out.glob("recsys-*.whl")
    return wheel


def role_venv(role_name: str, wheel: Path) -> Path:
    """The role's environment: the lock (cached), then the current project."""
    role = roles.ROLES[role_name]
    lock = roles.lock_path(role)
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes())
    digest.update(lock.read_bytes())
    digest.update(sys.version.encode())
    key = digest.hexdigest()[:16]
    venv = CACHE / f"{role_name}-{key}"
    python = venv / "bin" / "python"
    if not (venv / ".complete").exists():
        # one environment per role is kept: the previous keys' go
        for old in CACHE.glob(f"{role_name}-*"):
            shutil.rmtree(old, ignore_errors=True)
        venv.parent.mkdir(parents=True, exist_ok=True)
        _run(sys.executable, "-m", "venv", venv)
        # as the Dockerfile: every pin of the lock, nothing resolved beyond it, wheels only
        _run(python, "-m", "pip", "install", "-q", "--no-deps", "--only-binary=:all:", "-r", lock)
        (venv / ".complete").touch()
    _run(python, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", wheel)
    _run(python, "-m", "pip", "check")
    return venv


def assert_lean(venv: Path, role_name: str, wheel: Path) -> None:
    python = venv / "bin" / "python"
    found = _run(
        python,
        "-c",
        f"import importlib.util as u; print([m for m in {TRAINING_MODULES!r} if u.find_spec(m)])",
    ).stdout.strip()
    assert found == "[]", f"{role_name} environment holds {found}"
    # resolving the role's extra against the lock needs nothing the lock does not have
    report = venv / "report.json"
    role = roles.ROLES[role_name]
    _run(
        python,
        *("-m", "pip", "install", "-q", "--dry-run", "--report", report),
        *("-c", roles.lock_path(role), f"{wheel}[{role.extra}]"),
    )
    wanted = [item["metadata"]["name"] for item in json.loads(report.read_text())["install"]]
    assert set(wanted) <= {"recsys"}, f"{role_name}[{role.extra}] would also install {wanted}"


def tiny_artifact() -> ServingArtifact:
    """Four users, six items, popularity and item-item: enough for /ready and a ranked answer."""
    history = sp.csr_matrix(
        np.array(
            [[1, 1, 0, 0, 0, 0], [0, 1, 1, 0, 0, 0], [0, 0, 1, 1, 0, 0], [1, 0, 0, 0, 1, 1]],
            dtype=np.float32,
        )
    )
    similarity = sp.csr_matrix(history.T @ history, dtype=np.float32)
    similarity.setdiag(0)
    similarity.eliminate_zeros()
    popularity = np.asarray(history.sum(axis=0), dtype=np.float32).ravel()
    scorer = Scorer(
        {
            "popularity": Component("popularity", {"popularity": popularity}),
            "item_item": Component("item_item", {"similarity": similarity}),
        },
        {"popularity": 0.3, "item_item": 0.7},
    )
    return ServingArtifact(
        model_name="Tiny",
        model_version="Tiny-1",
        scorer=scorer,
        user_ids=np.array(["u1", "u2", "u3", "u4"]),
        item_ids=np.array([f"i{i}" for i in range(6)]),
        history=history,
        item_titles=np.array([f"Item {i}" for i in range(6)]),
        item_categories=np.array(["a", "a|b", "b", "c", "c", "a"]),
    )


@pytest.fixture
def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("RECSYS_", "PROMETHEUS_")) and k != "PYTHONPATH"}


@pytest.fixture
def process() -> Iterator[list[subprocess.Popen]]:
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()


def test_api_image_environment_serves_without_the_training_stack(
    project_wheel: Path, tmp_path: Path, clean_env: dict[str, str], process: list[subprocess.Popen]
) -> None:
    venv = role_venv("api", project_wheel)
    assert_lean(venv, "api", project_wheel)
    python = venv / "bin" / "python"
    where = _run(python, "-c", "import serving.app, serving.__main__; print(serving.app.__file__)").stdout
    assert where.strip().startswith(str(venv)), where

    storage = tmp_path / "data"
    art = tiny_artifact()
    store = Storage.from_uri(str(storage))
    write_to_storage(art, store, "artifacts", art.model_version)
    store.write_text(
        json.dumps({"model": art.model_name, "model_version": art.model_version, "path": ["artifacts", "Tiny-1"]}),
        "artifacts",
        "CHAMPION.json",
    )
    port = free_port()
    env = {
        **clean_env,
        "RECSYS_STORAGE_URI": str(storage),
        "RECSYS_API_HOST": "127.0.0.1",
        "RECSYS_API_PORT": str(port),
        "RECSYS_REDIS_URL": "",
        "RECSYS_EVENTS_DIR": str(tmp_path / "events"),
    }
    log = (tmp_path / "api.log").open("w")
    proc = subprocess.Popen(
        [str(python), "-m", "serving"],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    process.append(proc)
    wait_for_port(port, timeout=60, proc=proc)
    base = f"http://127.0.0.1:{port}"
    # the deployment's own smoke test: /health, /ready, one recommendation
    answer = smoke.smoke(base, "u1", ready_timeout=30, log=lambda _: None)
    assert answer["model_version"] == "Tiny-1"
    assert {it["item_id"] for it in answer["items"]} <= {f"i{i}" for i in range(6)} - {"i0", "i1"}
    with urllib.request.urlopen(f"{base}/docs", timeout=10) as resp:
        assert resp.status == 200
    assert get_settings(storage_uri=str(storage)).storage_uri == str(storage)


# neither installed in the console's environment nor imported by any page it renders
CONSOLE_FORBIDDEN = ("dagster", "mlflow", "torch", "recbole")
CONSOLE_CHECK = textwrap.dedent(
    """
    import importlib.util, sys
    from streamlit.testing.v1 import AppTest

    forbidden = sys.argv[2].split(",")
    installed = [m for m in forbidden if importlib.util.find_spec(m)]
    app = sys.argv[1]
    at = AppTest.from_file(app, default_timeout=120).run()
    errors = []
    for page in ["overview", "online", "drift", "models", "dataset", "lookup"]:
        at = at.switch_page(f"app_pages/{page}.py").run()
        errors += [f"{page}: {e.value}" for e in list(at.exception) + list(at.error)]
    # every module the app and its pages imported, the pipeline's included
    project = sorted(m for m in sys.modules if m.split(".")[0] == "recsys_assets")
    imported = sorted({m.split(".")[0] for m in sys.modules} & set(forbidden))
    values = {m.label: m.value for m in at.switch_page("app_pages/overview.py").run().metric}
    print(f"installed {installed}; imported {imported}; champion {values.get('Champion')}")
    print("project modules:", " ".join(project))
    print("\\n".join(errors) or "clean")
    """
)


def test_console_image_environment_renders_without_the_training_stack(
    project_wheel: Path, tmp_path: Path, clean_env: dict[str, str], process: list[subprocess.Popen]
) -> None:
    from tests.console_fixtures import (
        model_registry,
        write_event_log,
        write_ingestion_outputs,
        write_monitoring_outputs,
        write_training_outputs,
    )

    venv = role_venv("console", project_wheel)
    assert_lean(venv, "console", project_wheel)
    python = venv / "bin" / "python"
    where = "import importlib.util as u; print(u.find_spec('console.app').origin)"
    app = _run(python, "-c", where).stdout.strip()
    assert app == str(venv / "lib" / "python3.11" / "site-packages" / "console" / "app.py")

    # every source the pages read, written by this (full) environment as the pipeline writes them
    settings = get_settings(storage_uri=str(tmp_path / "data"))
    store = Storage.from_settings(settings)
    write_ingestion_outputs(store, settings)
    write_training_outputs(store)
    write_monitoring_outputs(store)
    write_event_log(store)
    store.write_table(model_registry(), "model_registry.parquet")
    env = {
        **clean_env,
        "RECSYS_STORAGE_URI": str(tmp_path / "data"),
        "RECSYS_API_URL": f"http://127.0.0.1:{free_port()}",  # no API: the lookup page says so
    }
    forbidden = ",".join(CONSOLE_FORBIDDEN)
    out = _run(python, "-c", CONSOLE_CHECK, app, forbidden, cwd=tmp_path, env=env, timeout=600).stdout.strip()
    assert out.endswith("clean"), out
    assert "installed []; imported []; champion EASE" in out, out
    # the pages reach the pipeline's code only through its contract
    project = next(line for line in out.splitlines() if line.startswith("project modules:")).split()[2:]
    outside = [m for m in project if m != "recsys_assets" and m.split(".")[:2] != ["recsys_assets", "contract"]]
    assert "recsys_assets.contract.storage" in project and not outside, f"imported beyond the contract: {outside}"

    port = free_port()
    log = (tmp_path / "console.log").open("w")
    proc = subprocess.Popen(
        [
            *(str(python), "-m", "streamlit", "run", app),
            *("--server.address", "127.0.0.1", "--server.port", str(port)),
            *("--server.headless", "true", "--browser.gatherUsageStats", "false"),
        ],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    process.append(proc)
    wait_for_port(port, timeout=60, proc=proc)
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=5) as resp:
                assert resp.status == 200 and resp.read() == b"ok"
                break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
