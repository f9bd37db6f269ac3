"""A RecBole model as a `Recommender`: trained through the adapter on a protocol's split, scored in the
shared index space, and exported as the serving component that reproduces its ranking (item-item
matrices, embeddings, popularity, Mult-VAE's layers) where the model has one.
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys_assets.contract.scoring import Component, Scorer
from recsys_assets.lib.evaluation.batched import DEFAULT_EVALUATION, EvaluationConfig, users_with_truth
from recsys_assets.lib.models.base import ListsFn, ProtocolData
from recsys_assets.lib.models.fitting import valid_ndcg
from recsys_assets.lib.models.recbole_adapter import (
    RecBoleModelConfig,
    TrainedRecBoleModel,
    Validate,
    train_recbole_model,
)
from recsys_assets.lib.models.sizing import EASE_MAX_ITEMS, refuse_dense


class RecBoleRecommender:
    """One RecBole model (`config.model`) behind the `Recommender` interface.

    `fit` trains on the split's train part and early-stops on its valid part (RecBole also reports
    its own metrics on the test part, in `trained.test_metrics`). Users and items RecBole never saw
    (in none of the three parts) score -inf; the serving component gives them what the scorer can
    (zeros, a fold-in of their history, the lowest scores). EASE refuses, before any work, a catalog of
    more than `max_dense_items` items (its item x item matrices are dense).
    """

    family = "recbole"
    lists: ListsFn | None = None  # ranks through `score` (`Recommender.lists`)
    search_seconds: float = 0.0  # no search reported apart from training (early stopping is training)

    def __init__(
        self,
        config: RecBoleModelConfig,
        evaluation: EvaluationConfig = DEFAULT_EVALUATION,
        max_dense_items: int = EASE_MAX_ITEMS,
    ) -> None:
        self.config = config
        self.evaluation = evaluation
        self.max_dense_items = max_dense_items

    @property
    def name(self) -> str:
        return self.config.model

    def fit(self, data: ProtocolData) -> Self:
        """Train, early-stopping on the validation part: through RecBole's collector up to
        `evaluation.recbole_collector_cells` validation users x items, above it through our batched
        `valid_ndcg` (NDCG@10, bounded memory), which is then RecBole's only validation."""
        refused = refuse_dense(self.name, data.data.n_items, self.max_dense_items)
        if refused:
            raise MemoryError(refused)
        split = data.split
        self.history: sp.csr_matrix = data.data.matrix
        self._users = data.data.users["user_id"].to_numpy()
        self._item_ids = data.data.items["item_id"]
        validate = self._validator(data) if self.validated_in_batches(data) else None
        self._bind(train_recbole_model(self.config, split.train, split.valid, split.test, validate=validate))
        component = export_component(self.trained, data)
        self._scorer = None if component is None else Scorer({self.name: component}, {self.name: 1.0})
        return self

    def validated_in_batches(self, data: ProtocolData) -> bool:
        """Whether RecBole's own validation would score more users x items than the evaluation allows."""
        n_valid = min(len(users_with_truth(data.valid_truth)), self.evaluation.users)
        return n_valid * data.data.n_items > self.evaluation.recbole_collector_cells

    def _validator(self, data: ProtocolData) -> Validate:
        def validate(trained: TrainedRecBoleModel) -> float:
            self._bind(trained)
            return valid_ndcg(self.score, data, self.evaluation)

        return validate

    def _bind(self, trained: TrainedRecBoleModel) -> None:
        self.trained = trained
        self._item_pos = positions(self._item_ids, trained.item_ids)

    @property
    def scorer(self) -> Scorer | None:
        return self._scorer

    @property
    def component(self) -> Component | None:
        return None if self._scorer is None else self._scorer.components[self.name]

    def score(self, user_idx: np.ndarray) -> np.ndarray:
        """RecBole's own scores from each user's training history (a sequential model reads it as a sequence)."""
        ipos = self._item_pos
        known_items = ipos >= 0
        out = np.full((len(user_idx), len(ipos)), -np.inf, dtype=np.float32)
        ids = self._users[user_idx]
        known = np.array([u in self.trained.user_index for u in ids], dtype=bool)
        if known.any():
            raw = self.trained.score(list(ids[known]), history="train", exclude_history=False)
            block = np.full((known.sum(), len(ipos)), -np.inf, dtype=np.float32)
            block[:, known_items] = raw[:, ipos[known_items]]
            out[known] = block
        return out

    def params(self) -> dict[str, object]:
        return self.config.recbole_settings()


def positions(ours: pd.Series, theirs: list[str]) -> np.ndarray:
    """For each of our ids, its position in `theirs` (-1 when absent)."""
    return pd.Index(theirs).get_indexer(ours.to_numpy())


def _to_ours_square(m: sp.spmatrix | np.ndarray, pos: np.ndarray, n: int) -> sp.csr_matrix:
    """An item x item matrix over RecBole's items (padding row/col 0 included) mapped to our items."""
    ok = pos >= 0
    sel = np.flatnonzero(ok)
    src = pos[ok] + 1  # RecBole's internal id = position + 1
    sub = m[src][:, src] if sp.issparse(m) else np.asarray(m)[np.ix_(src, src)]
    sub = sp.coo_matrix(sub)
    return sp.csr_matrix((sub.data.astype(np.float32), (sel[sub.row], sel[sub.col])), shape=(n, n))


def export_component(trained: TrainedRecBoleModel, pdata: ProtocolData) -> Component | None:
    """The serving component of a trained RecBole model, in our index space, or None."""
    name = trained.model_name
    items, users = pdata.data.items["item_id"], pdata.data.users["user_id"]
    ipos = positions(items, trained.item_ids)
    n_items = len(items)
    model = trained.model
    if name == "Pop":
        cnt = model.item_cnt.detach().cpu().numpy().ravel()
        pop = np.zeros(n_items, dtype=np.float32)
        pop[ipos >= 0] = cnt[ipos[ipos >= 0] + 1]
        return Component("popularity", {"popularity": pop})
    if name == "ItemKNN":
        return Component("item_item", {"similarity": _to_ours_square(model.w, ipos, n_items)}, {"binary": 1})
    if name == "EASE":
        sim = _to_ours_square(model.item_similarity, ipos, n_items)
        return Component("item_item", {"similarity": sim}, {"binary": 1})
    if name in ("BPR", "LightGCN"):
        emb = trained.embeddings()
        assert emb is not None
        upos = positions(users, emb.user_ids)
        uf = np.zeros((len(users), emb.user_embeddings.shape[1]), dtype=np.float32)
        vf = np.zeros((n_items, emb.item_embeddings.shape[1]), dtype=np.float32)
        uf[upos >= 0] = emb.user_embeddings[upos[upos >= 0]]
        vf[ipos >= 0] = emb.item_embeddings[ipos[ipos >= 0]]
        return Component("embedding", {"user_factors": uf, "item_factors": vf})
    if name == "MultiVAE":
        return autoencoder_component(model, ipos)
    return None


def autoencoder_component(model: Any, ipos: np.ndarray) -> Component:
    """Mult-VAE's layers with the item axis mapped to our items (RecBole's padding item dropped)."""
    enc = [m for m in model.encoder if hasattr(m, "weight")]
    dec = [m for m in model.decoder if hasattr(m, "weight")]
    known = ipos >= 0
    arrays: dict[str, np.ndarray] = {}
    for i, layer in enumerate(enc):
        w = layer.weight.detach().cpu().numpy()
        if i == 0:  # input: one column per item
            full = np.zeros((w.shape[0], len(ipos)), dtype=np.float32)
            full[:, known] = w[:, ipos[known] + 1]
            w = full
        arrays[f"enc_w{i}"] = w.astype(np.float32)
        arrays[f"enc_b{i}"] = layer.bias.detach().cpu().numpy().astype(np.float32)
    for i, layer in enumerate(dec):
        w = layer.weight.detach().cpu().numpy()
        b = layer.bias.detach().cpu().numpy()
        if i == len(dec) - 1:  # output: one row per item; items it never saw rank last
            full_w = np.zeros((len(ipos), w.shape[1]), dtype=np.float32)
            full_b = np.full(len(ipos), float(b[1:].min()) - 10.0, dtype=np.float32)
            full_w[known] = w[ipos[known] + 1]
            full_b[known] = b[ipos[known] + 1]
            w, b = full_w, full_b
        arrays[f"dec_w{i}"] = w.astype(np.float32)
        arrays[f"dec_b{i}"] = b.astype(np.float32)
    params: dict[str, float | int | str] = {"n_enc": len(enc), "n_dec": len(dec), "latent": int(model.lat_dim / 2)}
    return Component("autoencoder", arrays, params)
