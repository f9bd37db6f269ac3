"""The registered pyfunc model is portable: in a fresh virtual environment holding only the model's
declared requirements (from the package index pip is configured with), it loads and predicts the same
lists as here, without this project installed, so `mlflow models serve` can serve it.

The environment is built once per requirements set and kept under the temporary folder (keyed by the
requirements' hash), so later runs only load and predict."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import pandas as pd
import pytest

from recsys_assets.contract.artifact import save_artifact
from recsys_assets.lib.pyfunc import ServingPyfunc
from recsys_assets.lib.tracking import CHAMPION, MlflowTracking
from tests.api_support import movielens_artifact

pytestmark = pytest.mark.integration

PROBE = """
import json, sys
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
out = model.predict(pd.DataFrame({"user_id": ["1", "2", "no-such-user"], "k": [5, 5, 3]}))
heavy = sorted(n for n in ("dagster", "torch", "recbole", "pydantic_settings") if n in sys.modules)
origin = sys.modules["recsys_assets"].__file__
print(json.dumps({"rows": out.to_dict("records"), "heavy": heavy, "origin": origin}))
"""


def fresh_venv(requirements: Path) -> Path:
    """A virtual environment with exactly `requirements` installed (no system site packages)."""
    digest = hashlib.sha256(requirements.read_bytes() + sys.version.encode()).hexdigest()[:16]
    venv = Path(tempfile.gettempdir()) / f"recsys-pyfunc-venv-{digest}"
    with open(f"{venv}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (venv / ".complete").exists():
            shutil.rmtree(venv, ignore_errors=True)
            base = getattr(sys, "_base_executable", sys.executable)
            subprocess.run([base, "-m", "venv", str(venv)], check=True, timeout=300)
            done = subprocess.run(
                [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-r", str(requirements)],
                capture_output=True,
                text=True,
                timeout=1200,
            )
            assert done.returncode == 0, done.stderr[-3000:]
            (venv / ".complete").write_text(requirements.read_text())
    return venv


def test_registered_model_predicts_in_a_fresh_venv(tmp_path: Path) -> None:
    tracking = MlflowTracking(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_location=(tmp_path / "mlartifacts").as_uri()
    )
    art = movielens_artifact()
    save_artifact(art, str(tmp_path / "artifact"))
    metrics = pd.DataFrame([{"metric": "ndcg", "k": 10, "protocol": "temporal", "slice": "all", "value": 0.1}])
    run_id = tracking.log_training_run("Hybrid", {}, metrics, art.dataset_fingerprint)
    version = tracking.register_artifact(str(tmp_path / "artifact"), run_id, CHAMPION)
    location = tracking.client().get_model_version_download_uri(tracking.registered_model, version)
    model_dir = Path(url2pathname(urlparse(location).path))
    # the model declares every distribution its code imports, and carries that code
    requirements = model_dir / "requirements.txt"
    declared = {line.split("==")[0] for line in requirements.read_text().split() if line}
    assert {"mlflow", "numpy", "pandas", "scipy"} <= declared
    assert (model_dir / "code" / "recsys_assets" / "lib" / "pyfunc.py").is_file()
    assert not (model_dir / "code" / "recsys_assets" / "defs").exists()

    venv = fresh_venv(requirements)
    # the venv sees neither this project nor its packages
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("MLFLOW")}
    work = tmp_path / "elsewhere"
    work.mkdir()
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", PROBE, str(model_dir)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["heavy"] == []
    assert got["origin"].startswith(str(model_dir / "code")), got["origin"]
    # the same lists as the model here
    local = ServingPyfunc()
    local.load_context(type("Ctx", (), {"artifacts": {"serving": str(tmp_path / "artifact")}})())
    expected = local.predict(None, pd.DataFrame({"user_id": ["1", "2", "no-such-user"], "k": [5, 5, 3]}))
    assert got["rows"] == expected.to_dict("records")
    assert len(got["rows"]) == 13
