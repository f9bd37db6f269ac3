"""Candidates: RecBole models through the adapter and the native models, each trained on a protocol's
split and turned into test scores in the shared index space, plus a serving component where the
model has one (item-item matrices, embeddings, popularity, content).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys_assets.contract.scoring import Component
from recsys_assets.lib.models.fitting import Candidate, ProtocolData, Timer, valid_ndcg
from recsys_assets.lib.models.native import ContentModel, HybridModel, PopularityModel
from recsys_assets.lib.models.recbole_adapter import RecBoleModelConfig, TrainedRecBoleModel, train_recbole_model

# Models whose serving component reproduces RecBole's own ranking exactly.
EXPORTABLE = ("Pop", "ItemKNN", "EASE", "BPR", "LightGCN", "MultiVAE")


def _positions(ours: pd.Series, theirs: list[str]) -> np.ndarray:
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
    ipos = _positions(items, trained.item_ids)
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
        upos = _positions(users, emb.user_ids)
        uf = np.zeros((len(users), emb.user_embeddings.shape[1]), dtype=np.float32)
        vf = np.zeros((n_items, emb.item_embeddings.shape[1]), dtype=np.float32)
        uf[upos >= 0] = emb.user_embeddings[upos[upos >= 0]]
        vf[ipos >= 0] = emb.item_embeddings[ipos[ipos >= 0]]
        return Component("embedding", {"user_factors": uf, "item_factors": vf})
    if name == "MultiVAE":
        return _autoencoder_component(model, ipos)
    return None


def _autoencoder_component(model: object, ipos: np.ndarray) -> Component:
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
    params = {"n_enc": len(enc), "n_dec": len(dec), "latent": int(model.lat_dim / 2)}
    return Component("autoencoder", arrays, params)


def recbole_candidate(config: RecBoleModelConfig, pdata: ProtocolData) -> Candidate:
    """Train one RecBole model on the protocol's split; scores over our items (-inf where unknown)."""
    split = pdata.split
    with Timer() as t:
        trained = train_recbole_model(config, split.train, split.valid, split.test)
    items, users = pdata.data.items["item_id"], pdata.data.users["user_id"]
    ipos = _positions(items, trained.item_ids)
    known_items = ipos >= 0

    def scores(user_idx: np.ndarray) -> np.ndarray:
        out = np.full((len(user_idx), len(items)), -np.inf, dtype=np.float32)
        ids = users.to_numpy()[user_idx]
        known = np.array([u in trained.user_index for u in ids], dtype=bool)
        if known.any():
            raw = trained.score(list(ids[known]), history="train", exclude_history=False)
            block = np.full((known.sum(), len(items)), -np.inf, dtype=np.float32)
            block[:, known_items] = raw[:, ipos[known_items]]
            out[known] = block
        return out

    cand = Candidate(
        name=config.model,
        protocol=pdata.protocol,
        family="recbole",
        scores=scores,
        component=export_component(trained, pdata),
        train_seconds=t.seconds,
        params=config.recbole_settings(),
        extra={"epochs_trained": trained.epochs_trained, "recbole_test": trained.test_metrics},
    )
    cand.valid_ndcg10 = valid_ndcg(scores(np.arange(len(users))), pdata)
    cand.extra["trained"] = trained
    return cand


def native_candidate(name: str, pdata: ProtocolData, collaborative: Candidate | None = None) -> Candidate:
    """Popularity, Content or Hybrid (the latter blending `collaborative`'s component)."""
    with Timer() as t:
        if name == "Popularity":
            model = PopularityModel().fit(pdata.data)
        elif name == "Content":
            model = ContentModel().fit(pdata.data)
        elif name == "Hybrid":
            model = HybridModel(
                collaborative=collaborative.component if collaborative else None,
                collaborative_name=collaborative.name if collaborative else "",
            ).fit(pdata.data, valid=pdata.valid_truth)
        else:
            raise ValueError(f"unknown native model {name!r}; known: Popularity, Content, Hybrid")
    cand = Candidate(
        name=name,
        protocol=pdata.protocol,
        family="native",
        scores=model.score,
        component=None,
        train_seconds=t.seconds,
    )
    cand.extra["model"] = model
    if isinstance(model, HybridModel):
        cand.params = {
            "weights": model.weights,
            "bucket_weights": model.bucket_weights,
            "popularity_half_life_days": model.half_life_days,
            "collaborative": model.collaborative_name,
        }
    cand.valid_ndcg10 = valid_ndcg(model.score(np.arange(pdata.data.n_users)), pdata)
    return cand
