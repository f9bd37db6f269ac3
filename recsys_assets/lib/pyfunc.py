"""The serving artifact as a portable MLflow pyfunc model: what it runs, what it needs, and its code.

The logged model is models-from-code: a small script (`PYFUNC_CODE`) imports `ServingPyfunc` from this
module. `stage_code` copies this module and the project modules it imports (found by reading their
imports, so an import added later travels too) into a folder logged as the model's `code_paths`, and
`pip_requirements` pins the third-party distributions those modules import. The model then loads and
predicts in a fresh environment with only its declared requirements (tests/lib/test_pyfunc_portable.py),
which is what `mlflow models serve` needs; nothing here imports Dagster, RecBole or torch.
"""

from __future__ import annotations

import ast
import importlib.metadata
import shutil
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import scipy.sparse as sp
from mlflow.types import ColSpec, Schema

from recsys_assets.contract.artifact import ServingArtifact, load_artifact

# Name of the serving folder inside the pyfunc model.
SERVING_KEY = "serving"
PACKAGE = "recsys_assets"

INPUT_SCHEMA = Schema([ColSpec("string", "user_id"), ColSpec("long", "k")])
OUTPUT_SCHEMA = Schema([ColSpec("string", "user_id"), ColSpec("long", "rank"), ColSpec("string", "item_id")])
_OUTPUT_DTYPES = {"user_id": "object", "rank": "int64", "item_id": "object"}

PYFUNC_CODE = """\
\"\"\"MLflow models-from-code entry point of a recsys serving artifact.\"\"\"

import mlflow

from recsys_assets.lib.pyfunc import ServingPyfunc

mlflow.models.set_model(ServingPyfunc())
"""


class ServingPyfunc(mlflow.pyfunc.PythonModel):
    """The serving artifact as an MLflow pyfunc model: top-k item ids per user, numpy only.

    Input: a DataFrame with `user_id` (string) and `k`, one row per request. Output: a long
    DataFrame `user_id, rank, item_id`, best first, seen items excluded; a user unknown to
    the artifact gets the blend computed from an empty history (popularity).
    """

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.artifact: ServingArtifact = load_artifact(context.artifacts[SERVING_KEY])
        self.user_index = self.artifact.user_index()

    def predict(
        self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame, params: dict | None = None
    ) -> pd.DataFrame:
        art = self.artifact
        frame = pd.DataFrame(model_input)
        users = frame["user_id"].astype(str).to_numpy()
        ks = frame["k"].astype("int64").to_numpy()
        uidx = np.array([self.user_index.get(u, -1) for u in users], dtype=np.int64)
        history = _history_rows(art.history, uidx)
        parts = []
        for k in np.unique(ks):
            rows = np.flatnonzero(ks == k)
            # the same call as `ServingArtifact.topk_for_users`, so known users get the offline lists
            idx = art.scorer.topk(history[rows], int(k), user_idx=uidx[rows], exclude=history[rows])
            ok = idx >= 0  # -1 pads a list shorter than k (too few unseen items)
            parts.append(
                pd.DataFrame(
                    {
                        "_row": np.repeat(rows, idx.shape[1])[ok.ravel()],
                        "rank": np.tile(np.arange(1, idx.shape[1] + 1, dtype=np.int64), len(rows))[ok.ravel()],
                        "item_id": art.item_ids[idx[ok]].astype(str),
                    }
                )
            )
        if not parts:
            return pd.DataFrame({c: pd.Series(dtype=t) for c, t in _OUTPUT_DTYPES.items()})
        out = pd.concat(parts, ignore_index=True).sort_values(["_row", "rank"], kind="stable")
        out.insert(0, "user_id", users[out["_row"].to_numpy()])
        return out.drop(columns="_row").reset_index(drop=True)


def _history_rows(history: sp.csr_matrix, uidx: np.ndarray) -> sp.csr_matrix:
    """Training-history rows of `uidx`, kept entry for entry; an empty row where `uidx` is -1."""
    known = uidx >= 0
    sel = history[np.where(known, uidx, 0)]
    keep = np.repeat(known, np.diff(sel.indptr))
    indptr = np.concatenate([[0], np.cumsum(np.diff(sel.indptr) * known)])
    return sp.csr_matrix((sel.data[keep], sel.indices[keep], indptr), shape=sel.shape)


# ---------------------------------------------------------------------------------------------
# What the logged model carries: its code and its requirements
# ---------------------------------------------------------------------------------------------


def _package_root() -> Path:
    return Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    """Dotted names a module imports at any level (relative imports are not used in this project)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def code_modules() -> tuple[list[Path], set[str]]:
    """The project's module files the pyfunc imports (transitively), and the top-level third-party
    packages they import."""
    root = _package_root()
    todo, files, third_party = [Path(__file__).resolve()], set(), set()
    while todo:
        path = todo.pop()
        if path in files:
            continue
        files.add(path)
        for name in _imports(path):
            top = name.split(".")[0]
            if top != PACKAGE:
                if top not in sys.stdlib_module_names and top != "__future__":
                    third_party.add(top)
                continue
            rel = Path(*name.split(".")[1:])
            if not rel.parts:
                continue
            for candidate in (root / rel.with_suffix(".py"), root / rel / "__init__.py"):
                if candidate.is_file():
                    todo.append(candidate.resolve())
    return sorted(files), third_party


def stage_code(dst: str | Path) -> str:
    """Copy the modules the pyfunc imports (with their packages' `__init__.py`) under `dst/recsys_assets`;
    returns that folder, for `code_paths`."""
    root = _package_root()
    files, _ = code_modules()
    target = Path(dst) / PACKAGE
    for path in files:
        rel = path.relative_to(root)
        for parent in [Path(), *reversed(rel.parents[:-1])]:
            init = root / parent / "__init__.py"
            (target / parent).mkdir(parents=True, exist_ok=True)
            if init.is_file() and not (target / parent / "__init__.py").exists():
                shutil.copyfile(init, target / parent / "__init__.py")
        shutil.copyfile(path, target / rel)
    return str(target)


def pip_requirements() -> list[str]:
    """Every third-party distribution the pyfunc's code imports, pinned to the installed version.

    Given explicitly so MLflow does not load the model in a subprocess to infer them."""
    _, packages = code_modules()
    dists = importlib.metadata.packages_distributions()
    pinned = {"mlflow": mlflow.__version__}
    for package in packages:
        for dist in dists.get(package, []):
            name = dist.lower()
            # mlflow's own import package is shared by mlflow and mlflow-skinny: pin mlflow only
            if name.startswith("mlflow"):
                continue
            pinned[name] = importlib.metadata.version(dist)
    return [f"{name}=={version}" for name, version in sorted(pinned.items())]
