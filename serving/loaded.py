"""The served model: an artifact plus the look-up tables a request needs, built and checked once at load
(`LoadedModel.build`); `serving/model.py` holds the champion and challenger built here."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from recsys_assets.contract.artifact import ArtifactError, ServingArtifact
from recsys_assets.contract.lookup import (
    SIMILARITY_T,
    Categories,
    CategoryIndex,
    CategorySpelling,
    IdIndex,
    LookupTableError,
    Titles,
    lookup_arrays,
)
from recsys_assets.contract.retrieval import Retriever, use_candidates
from serving.schemas import ArtifactInfo


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclass
class LoadedModel:
    """An artifact plus the look-up tables a request needs, built once at load.

    The tables are views of the artifact's own arrays (`recsys_assets.contract.lookup`): with a
    memory-mapped artifact, N workers share them rather than each holding Python dicts and lists of
    every id and title. An artifact made before its look-up tables were stored gets them computed here.
    """

    artifact: ServingArtifact
    path: str
    loaded_at: str
    user_index: IdIndex
    item_index: IdIndex
    titles: Titles
    categories: Categories
    # casefolded category -> item indices, and -> the catalog's spelling
    category_items: CategoryIndex
    category_names: CategorySpelling
    components: dict[str, Any] = field(default_factory=dict)
    # item-item matrices transposed (CSR): a recommended item's column is then a cheap row, for reasons
    similarity_t: dict[str, sp.csr_matrix] = field(default_factory=dict)
    # the candidate path, for a catalog above the threshold; None: every item is scored
    retriever: Retriever | None = None

    @property
    def version(self) -> str:
        return self.artifact.model_version

    @property
    def n_items(self) -> int:
        return len(self.artifact.item_ids)

    @classmethod
    def build(cls, art: ServingArtifact, path: str, candidate_threshold: int = 20_000) -> LoadedModel:
        tables = art.lookup
        n_items = len(art.item_ids)
        if not tables:  # an artifact made before the look-up tables were stored
            tables = lookup_arrays(art.user_ids, art.item_ids, art.item_categories, art.scorer.components)
        try:
            categories = CategoryIndex(
                tables["category_keys"], tables["category_names"], tables["category_items"], n_items
            )
            similarity_t = {
                name: tables[f"{name}.{SIMILARITY_T}"]
                for name, c in art.scorer.components.items()
                if c.kind == "item_item"
            }
            for name, sim_t in similarity_t.items():
                if sim_t.shape != (n_items, n_items):
                    raise LookupTableError(f"{name}.{SIMILARITY_T} has shape {sim_t.shape}, expected {n_items} items")
            model = cls(
                artifact=art,
                path=path,
                loaded_at=now(),
                user_index=IdIndex(art.user_ids, tables["user_order"]),
                item_index=IdIndex(art.item_ids, tables["item_order"]),
                titles=Titles(art.item_titles, art.item_ids),
                categories=Categories(art.item_categories),
                category_items=categories,
                category_names=categories.spelling,
                components=dict(art.scorer.components),
                similarity_t=similarity_t,
                retriever=(
                    Retriever(art.scorer, art.retrieval) if use_candidates(n_items, candidate_threshold) else None
                ),
            )
        except (KeyError, LookupTableError) as exc:
            raise ArtifactError(f"artifact look-up tables do not fit its arrays: {exc}") from exc
        model.smoke_test()
        return model

    def smoke_test(self) -> None:
        """Score an empty and a one-item history with every component: an artifact that cannot score is
        not served, and each component builds its look-up caches here rather than in the first request."""
        scorer = self.artifact.scorer
        one = (np.array([0], dtype=np.int64), np.ones(1, dtype=np.float32))
        empty = (np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32))
        try:
            for component in scorer.components.values():
                component.score_one(*one, -1)
            results = [scorer.score_one(*one, -1), scorer.score_one(*empty, -1)]
        except Exception as exc:
            raise ArtifactError(f"artifact cannot score: {type(exc).__name__}: {exc}") from exc
        for scores in results:
            if scores.shape != (self.n_items,):
                raise ArtifactError(f"artifact scores have shape {scores.shape}, expected ({self.n_items},)")
        if self.retriever is not None:
            try:  # maps the ANN indexes now rather than in the first request
                self.retriever.topk_one(*one, 10)
            except Exception as exc:
                raise ArtifactError(f"artifact cannot score candidates: {type(exc).__name__}: {exc}") from exc

    def info(self) -> ArtifactInfo:
        art = self.artifact
        return ArtifactInfo(
            model_name=art.model_name,
            model_version=art.model_version,
            path=self.path,
            created_at=art.created_at,
            loaded_at=self.loaded_at,
            checksum=art.checksum,
            n_users=len(art.user_ids),
            n_items=len(art.item_ids),
            components={name: c.kind for name, c in art.scorer.components.items()},
            weights={k: float(v) for k, v in art.scorer.weights.items()},
            metrics={k: float(v) for k, v in art.metrics.items()},
        )
