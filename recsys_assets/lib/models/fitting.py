"""Train every candidate on the same splits and evaluate them with one metrics implementation.

For each protocol (`random`: RecBole's 8:1:1 per user; `temporal`: one global time cut) the data
are split once; every model trains on the train part, early-stops or tunes on the valid part, and
is evaluated on the test part with full ranking over all items, the items a user already had in
train or valid excluded. Results are one long table: model x metric x K x protocol x slice.
`serving_artifact` turns a trained candidate into the artifact the API loads.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys_assets.contract.artifact import ServingArtifact
from recsys_assets.contract.scoring import Component, topk_from_scores
from recsys_assets.lib.evaluation import splits as S
from recsys_assets.lib.evaluation.metrics import evaluate_topk, exclusion_matrix
from recsys_assets.lib.models.ann import retrieval_arrays
from recsys_assets.lib.models.base import ProtocolData, Recommender, TrainData

logger = logging.getLogger(__name__)

KS = (5, 10, 20)
ALL = "all"
SLICES = (ALL, *S.USER_SLICES, S.NEW_ITEM_SLICE)
CHAMPION_METRIC = ("ndcg", 10, S.TEMPORAL)


def fingerprint(inter: pd.DataFrame) -> str:
    """A short, stable hash of the interactions (ids, types, times, values)."""
    h = hashlib.sha256()
    cols = ["user_id", "item_id", "event_type", "timestamp", "value"]
    h.update(pd.util.hash_pandas_object(inter[cols], index=False).to_numpy().tobytes())
    return h.hexdigest()[:16]


def prepare(
    interactions: pd.DataFrame,
    items: pd.DataFrame,
    users: pd.DataFrame,
    protocol: str,
    seed: int = 2020,
    ratios: Sequence[float] = S.DEFAULT_RATIOS,
) -> ProtocolData:
    """Split once and index the parts; a test ratio of 0 (a refit) leaves the test matrices empty."""
    split = S.split(interactions, protocol, ratios=ratios, seed=seed)
    data = TrainData.build(split.train, items, users)
    uid, iid = users["user_id"], items["item_id"]
    valid = S.interactions_to_csr(split.valid, uid, iid)
    test = S.interactions_to_csr(split.test, uid, iid)
    seen = S.interactions_to_csr(pd.concat([split.train, split.valid]), uid, iid)
    n_train = np.diff(data.matrix.indptr)
    labels = np.asarray(S.user_slice_labels(n_train).astype(str))
    trained_items = np.diff(data.matrix.tocsc().indptr) > 0
    new_item = test.multiply(sp.csr_matrix(~trained_items, dtype=np.int8)).tocsr()
    new_item.eliminate_zeros()
    pop = np.diff(data.matrix.tocsc().indptr).astype(np.float64)
    return ProtocolData(
        protocol=protocol,
        split=split,
        data=data,
        valid_truth=valid,
        test_truth=test,
        test_exclude=exclusion_matrix(seen, test),
        user_slice=labels,
        new_item_truth=new_item,
        item_popularity=pop,
    )


def evaluate_scores(
    scores: np.ndarray, pdata: ProtocolData, model: str, users: np.ndarray | None = None
) -> pd.DataFrame:
    """Every metric at K = 5, 10, 20 on the test part, overall and per cold-start slice."""
    users = np.arange(pdata.data.n_users) if users is None else users
    topk = topk_from_scores(scores, max(KS), exclude=pdata.test_exclude[users])
    truth = pdata.test_truth[users]
    frames = []
    for name in SLICES:
        if name == S.NEW_ITEM_SLICE:
            res = evaluate_topk(topk, pdata.new_item_truth[users], KS, pdata.item_popularity)
        else:
            mask = None if name == ALL else pdata.user_slice[users] == name
            if mask is not None and not mask.any():
                continue
            res = evaluate_topk(topk, truth, KS, pdata.item_popularity, users=mask)
        if res["n_users"].iloc[0] == 0:
            continue
        res.insert(0, "slice", name)
        frames.append(res)
    out = pd.concat(frames, ignore_index=True)
    out.insert(0, "protocol", pdata.protocol)
    out.insert(0, "model", model)
    return out


@dataclass
class Candidate:
    """A fitted model on one protocol: what the comparison records of it (timings, validation NDCG@10,
    hyper-parameters) around the `Recommender` itself."""

    name: str
    protocol: str
    family: str  # "recbole" | "native"
    model: Recommender
    # The model's single serving component, which a hybrid can blend; None when it has none or several.
    component: Component | None = None
    valid_ndcg10: float = float("nan")
    train_seconds: float = 0.0
    params: dict[str, object] = field(default_factory=dict)
    extra: dict[str, object] = field(default_factory=dict)

    def scores(self, user_idx: np.ndarray) -> np.ndarray:
        """The model's scores for `user_idx` (see `Recommender.score`)."""
        return self.model.score(user_idx)


def valid_ndcg(scores: np.ndarray, pdata: ProtocolData) -> float:
    users = np.flatnonzero(np.diff(pdata.valid_truth.indptr) > 0)
    topk = topk_from_scores(scores[users], 10, exclude=pdata.data.matrix[users])
    res = evaluate_topk(topk, pdata.valid_truth[users], (10,))
    return float(res.loc[res["metric"] == "ndcg", "value"].iloc[0])


def metric_value(results: pd.DataFrame, model: str, metric: str, k: int, protocol: str, slice_: str = ALL) -> float:
    row = results[
        (results["model"] == model)
        & (results["metric"] == metric)
        & (results["k"] == k)
        & (results["protocol"] == protocol)
        & (results["slice"] == slice_)
    ]
    return float(row["value"].iloc[0]) if len(row) else float("nan")


def summarise(results: pd.DataFrame, models: Iterable[str]) -> pd.DataFrame:
    """Wide view: one row per model and protocol with the headline metrics at K=10 (all users)."""
    sub = results[(results["slice"] == ALL) & (results["k"] == 10) & results["model"].isin(list(models))]
    return sub.pivot_table(index=["protocol", "model"], columns="metric", values="value").reset_index()


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def evaluate_artifact(art: ServingArtifact, pdata: ProtocolData, name: str) -> pd.DataFrame:
    """Evaluate a serving artifact on a protocol's test part, the way the API would serve it: each
    user's history is their training events on the artifact's items (users it does not know are
    scored from that history alone), and items it does not know are never recommended."""
    items = pdata.data.items["item_id"]
    pos = pd.Index(art.item_ids).get_indexer(items.to_numpy())  # our item -> artifact item
    ev = pdata.data.events
    cols = pos[ev["item_idx"].to_numpy()]
    keep = cols >= 0
    hist = sp.csr_matrix(
        (ev["weight"].to_numpy("float32")[keep], (ev["user_idx"].to_numpy()[keep], cols[keep])),
        shape=(pdata.data.n_users, len(art.item_ids)),
    )
    hist.sum_duplicates()
    upos = pd.Index(art.user_ids).get_indexer(pdata.data.users["user_id"].to_numpy())
    users = np.flatnonzero(np.diff(pdata.test_truth.indptr) > 0)
    scored = art.scorer.score(hist[users], user_idx=upos[users])
    out = np.full((len(users), len(items)), -np.inf)
    out[:, pos >= 0] = scored[:, pos[pos >= 0]]
    return evaluate_scores(out, pdata, name, users=users)


def artifact_metrics(results: pd.DataFrame) -> dict[str, float]:
    """The metrics an artifact records: every metric at K=10 over all users (`"ndcg@10": ...`)."""
    rows = results[(results["slice"] == ALL) & (results["k"] == 10)]
    return {f"{r.metric}@{r.k}": float(r.value) for r in rows.itertuples()}


def serving_artifact(
    cand: Candidate,
    data: TrainData,
    dataset_fingerprint: str,
    *,
    metrics: dict[str, float] | None = None,
    history: sp.csr_matrix | None = None,
) -> ServingArtifact | None:
    """The serving artifact of a trained candidate over every user and item of `data`, or None when the
    model has no serving component. `history` (users x items event weights) defaults to the training
    matrix; `trained_until` is the time of the last event in `data`. The artifact carries the candidate
    path's arrays (moments, ANN indexes) whatever its size; the API decides which path serves."""
    scorer = cand.model.scorer
    if scorer is None:
        return None
    items = data.items
    last = data.events["timestamp"].max() if len(data.events) else None
    history = data.matrix if history is None else sp.csr_matrix(history)
    return ServingArtifact(
        model_name=cand.name,
        model_version=f"{cand.name}-{dataset_fingerprint[:8]}-{dt.datetime.now(dt.UTC):%Y%m%d%H%M%S}",
        scorer=scorer,
        user_ids=data.users["user_id"].to_numpy(dtype=str),
        item_ids=items["item_id"].to_numpy(dtype=str),
        history=history,
        item_titles=items["title"].fillna("").astype(str).to_numpy(),
        item_categories=items["categories"].fillna("").astype(str).to_numpy(),
        dataset_fingerprint=dataset_fingerprint,
        metrics=dict(metrics or {}),
        trained_until=_utc_iso(last),
        # moments and ANN indexes for the candidate path (large catalogs; see contract/retrieval.py)
        retrieval=retrieval_arrays(scorer, history),
    )


def _utc_iso(ts: object) -> str:
    if ts is None or pd.isna(ts):
        return ""
    stamp = pd.Timestamp(ts)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return stamp.isoformat()
