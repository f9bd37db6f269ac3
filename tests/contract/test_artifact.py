"""The serving artifact: exact reproduction of the offline top-10 in a process without RecBole or torch,
faithful export of RecBole models, and refusal of corrupt or incompatible artifacts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recsys_assets.contract.artifact import (
    ARRAYS,
    MANIFEST,
    ArtifactError,
    ServingArtifact,
    load_artifact,
    save_artifact,
)
from recsys_assets.contract.scoring import topk_from_scores
from recsys_assets.contract.settings import get_settings
from recsys_assets.lib.ingest import cleaning, readers
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def temporal(tmp_path_factory: pytest.TempPathFactory):
    from recsys_assets.lib.models.fitting import prepare

    s = get_settings(storage_uri=str(tmp_path_factory.mktemp("art")))
    raw, items, users = readers.read_movielens()
    inter = cleaning.clean_events(raw, s.cleaning()).interactions
    return prepare(inter, cleaning.build_items(inter, items), cleaning.build_users(inter, users), "temporal")


@pytest.fixture(scope="module")
def trained(temporal):
    """EASE through RecBole, and the hybrid built on its exported component."""
    from recsys_assets.lib.models.candidates import native_candidate, recbole_candidate
    from recsys_assets.lib.models.recbole_adapter import RecBoleModelConfig
    from recsys_assets.lib.models.tuning import model_config

    ease = recbole_candidate(RecBoleModelConfig(**model_config("EASE", "smoke")), temporal)
    hybrid = native_candidate("Hybrid", temporal, ease)
    return ease, hybrid


def make_artifact(cand, pdata) -> ServingArtifact:
    items = pdata.data.items
    return ServingArtifact(
        model_name=cand.name,
        model_version=f"{cand.name}-test",
        scorer=cand.model.scorer,
        user_ids=pdata.data.users["user_id"].to_numpy(dtype=str),
        item_ids=items["item_id"].to_numpy(dtype=str),
        history=pdata.data.matrix,
        item_titles=items["title"].fillna("").astype(str).to_numpy(),
        item_categories=items["categories"].fillna("").astype(str).to_numpy(),
    )


@pytest.mark.parametrize("model", ["EASE", "ItemKNN", "BPR", "LightGCN", "MultiVAE", "Pop"])
def test_exported_recbole_component_ranks_like_recbole(model: str, trained, temporal) -> None:
    from recsys_assets.lib.models.candidates import recbole_candidate
    from recsys_assets.lib.models.recbole_adapter import RecBoleModelConfig
    from recsys_assets.lib.models.tuning import model_config

    cand = (
        trained[0]
        if model == "EASE"
        else recbole_candidate(RecBoleModelConfig(**model_config(model, "smoke")), temporal)
    )
    users = np.arange(temporal.data.n_users)
    seen = temporal.data.matrix
    theirs = topk_from_scores(cand.scores(users), 10, exclude=seen)
    ours = topk_from_scores(cand.component.raw_scores(seen, users), 10, exclude=seen)
    same = (theirs == ours).all(axis=1).mean()
    assert same >= 0.99, f"only {same:.1%} of top-10 lists identical"


def test_artifact_reproduces_offline_top10_without_recbole(trained, temporal, tmp_path: Path) -> None:
    _, hybrid = trained
    users = np.arange(0, temporal.data.n_users, 7)
    offline = topk_from_scores(hybrid.scores(users), 10, exclude=temporal.data.matrix[users])
    folder = tmp_path / "artifact"
    save_artifact(make_artifact(hybrid, temporal), str(folder))
    code = f"""
import json, sys
import numpy as np
from recsys_assets.contract.artifact import load_artifact
art = load_artifact({str(folder)!r})
users = np.array({users.tolist()!r})
top = art.topk_for_users(users, 10)
assert not any(m in sys.modules for m in ("recbole", "torch", "dagster")), "heavy imports"
print(json.dumps(top.tolist()))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    served = np.array(json.loads(out.stdout))
    np.testing.assert_array_equal(served, offline)


def test_corrupt_or_incompatible_artifacts_are_refused(trained, temporal, tmp_path: Path) -> None:
    _, hybrid = trained
    folder = tmp_path / "a"
    save_artifact(make_artifact(hybrid, temporal), str(folder))
    good = load_artifact(str(folder))
    assert good.checksum and good.scorer.weights == hybrid.model.weights

    data = (folder / ARRAYS).read_bytes()
    (folder / ARRAYS).write_bytes(data[:-10] + b"0123456789")
    with pytest.raises(ArtifactError, match="checksum"):
        load_artifact(str(folder))
    (folder / ARRAYS).write_bytes(data)

    manifest = json.loads((folder / MANIFEST).read_text())
    (folder / MANIFEST).write_text(json.dumps({**manifest, "schema_version": 99}))
    with pytest.raises(ArtifactError, match="schema_version"):
        load_artifact(str(folder))
    (folder / MANIFEST).write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_artifact(str(folder))
    (folder / MANIFEST).unlink()
    with pytest.raises(ArtifactError, match="missing"):
        load_artifact(str(folder))
