"""The scale benchmark's synthetic catalog as a champion the API and the load generator serve."""

from __future__ import annotations

import json
from pathlib import Path

from recsys_assets.contract.artifact import CHAMPION_POINTER
from recsys_assets.tools import candidates_bench
from recsys_assets.tools.loadgen.champion import ensure_champion, load_champion


def test_synthetic_catalog_becomes_a_champion_with_its_tables(tmp_path: Path, capsys) -> None:
    ensure_champion(tmp_path, synthetic_items=3_000)
    pointer = json.loads((tmp_path / Path(*CHAMPION_POINTER)).read_text())
    assert pointer["path"] == ["artifacts", "synthetic-3000"]
    model = load_champion(tmp_path)
    assert model.n_items == 3_000 and model.item_index.get("i2999") == 2999 and model.user_index.get("u5") == 5
    assert "embedding.ann" in model.artifact.retrieval and "item_order" in model.artifact.lookup
    # timing both paths on it: recall of the exact top-10 and p50/p95 per list
    assert candidates_bench.main(["paths", "--artifact", str(tmp_path), "--users", "20"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["items"] == 3_000 and out["recall@10"] >= 0.9
    assert out["recommend_candidates"]["p50_ms"] <= out["recommend_candidates"]["p95_ms"]
