"""Train every candidate on the same splits and evaluate them with one metrics implementation.

For each protocol (`random`: RecBole's 8:1:1 per user; `temporal`: one global time cut) the data
are split once; every model trains on the train part, early-stops or tunes on the valid part, and
is evaluated on the test part with full ranking over all items, in one or two settings:

* `discovery`: the items a user already had in train or valid are hidden and are not positives, so
  the number says how well a model finds something new (always computed);
* `repeat` ("buy again"): nothing is hidden and every test positive counts, re-consumed items included
  (computed when some test positive is an item the user had before).

Results are one long table: model x metric x K x protocol x setting x slice; `repeat_share` is the
protocol's share of test positives that are re-consumed items. The champion is chosen on the
`evaluation_target` (`discovery`, `repeat`, or `blended`: their mean). `serving_artifact` turns a
trained candidate into the artifact the API loads.
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
from recsys_assets.contract.scoring import Component, topk_from_scores, truth_to_csr
from recsys_assets.lib.evaluation import splits as S
from recsys_assets.lib.evaluation.batched import (
    DEFAULT_EVALUATION,
    EvaluationConfig,
    ScoreFn,
    ranked_lists,
    ranked_lists_by,
    sample_users,
    users_with_truth,
)
from recsys_assets.lib.evaluation.metrics import RESULT_COLUMNS, evaluate_topk, exclusion_matrix
from recsys_assets.lib.models.ann import candidate_recall, retrieval_arrays
from recsys_assets.lib.models.base import ListsFn, ProtocolData, Recommender, TrainData

logger = logging.getLogger(__name__)

KS = (5, 10, 20)
ALL = "all"
SLICES = (ALL, *S.USER_SLICES, S.NEW_ITEM_SLICE)
CHAMPION_METRIC = ("ndcg", 10, S.TEMPORAL)
DISCOVERY, REPEAT, BLENDED = "discovery", "repeat", "blended"
SETTINGS = (DISCOVERY, REPEAT)  # the evaluation settings (`setting` column; a table without it is discovery)
TARGETS = (DISCOVERY, REPEAT, BLENDED)  # what the champion can be chosen on


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
    seen.data[:] = 1
    again = sp.csr_matrix(test.multiply(seen))
    again.eliminate_zeros()
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
        test_exclude=exclusion_matrix(seen),
        user_slice=labels,
        new_item_truth=new_item,
        item_popularity=pop,
        repeat_truth=again,
    )


def has_repeats(pdata: ProtocolData) -> bool:
    """Whether some test positive is an item the user had in train or valid (then `repeat` is evaluated)."""
    return pdata.repeat_truth is not None and pdata.repeat_truth.nnz > 0


def repeat_share(pdata: ProtocolData) -> float:
    """Share of the test positives (user-item pairs) that are items the user had in train or valid."""
    total = truth_to_csr(pdata.test_truth).nnz
    return truth_to_csr(pdata.repeat_truth).nnz / total if total and has_repeats(pdata) else 0.0


def setting_truth(pdata: ProtocolData, setting: str) -> tuple[sp.csr_matrix, sp.csr_matrix | None, sp.csr_matrix]:
    """(positives, items to hide, positives on items new to training) of one evaluation setting."""
    if setting == REPEAT:
        return pdata.test_truth, None, pdata.new_item_truth
    if setting != DISCOVERY:
        raise ValueError(f"unknown evaluation setting {setting!r}; known: {', '.join(SETTINGS)}")
    if not has_repeats(pdata):
        return pdata.test_truth, pdata.test_exclude, pdata.new_item_truth
    truth, new_item = truth_to_csr(pdata.test_truth), truth_to_csr(pdata.new_item_truth)
    return _minus(truth, pdata.test_exclude), pdata.test_exclude, _minus(new_item, pdata.test_exclude)


def _minus(a: sp.csr_matrix, b: sp.csr_matrix) -> sp.csr_matrix:
    out = sp.csr_matrix(a - a.multiply(truth_to_csr(b, a.shape[1])))
    out.eliminate_zeros()
    return out


def evaluate_lists(
    topk: np.ndarray,
    pdata: ProtocolData,
    model: str,
    users: np.ndarray,
    ci_level: float | None = None,
    setting: str = DISCOVERY,
) -> pd.DataFrame:
    """Every metric at K = 5, 10, 20 of the top-K lists of `users` (one row each) on the test part in one
    evaluation `setting`, overall and per cold-start slice; with `ci_level`, confidence intervals in
    `ci_low`, `ci_high`."""
    truth, _, new_item = setting_truth(pdata, setting)
    truth = truth[users]
    frames = []
    for name in SLICES:
        if name == S.NEW_ITEM_SLICE:
            res = evaluate_topk(topk, new_item[users], KS, pdata.item_popularity, ci_level=ci_level)
        else:
            mask = None if name == ALL else pdata.user_slice[users] == name
            if mask is not None and not mask.any():
                continue
            res = evaluate_topk(topk, truth, KS, pdata.item_popularity, users=mask, ci_level=ci_level)
        if res["n_users"].iloc[0] == 0:
            continue
        res.insert(0, "slice", name)
        frames.append(res)
    if not frames:  # nobody has a positive in this setting (e.g. discovery when every test item is a repeat)
        logger.warning(f"{model} ({pdata.protocol}): no test positive in the {setting} setting, nothing to evaluate")
        return pd.DataFrame(columns=["model", "protocol", "setting", "slice", *RESULT_COLUMNS])
    out = pd.concat(frames, ignore_index=True)
    out.insert(0, "setting", setting)
    out.insert(0, "protocol", pdata.protocol)
    out.insert(0, "model", model)
    return out


def evaluate_scores(
    scores: np.ndarray,
    pdata: ProtocolData,
    model: str,
    users: np.ndarray | None = None,
    setting: str = DISCOVERY,
) -> pd.DataFrame:
    """`evaluate_lists` from a dense score matrix (one row per entry of `users`, default every user);
    for small data: `evaluate_model` ranks in bounded memory."""
    users = np.arange(pdata.data.n_users) if users is None else users
    _, exclude, _ = setting_truth(pdata, setting)
    topk = topk_from_scores(scores, max(KS), exclude=None if exclude is None else exclude[users])
    return evaluate_lists(topk, pdata, model, users, setting=setting)


def evaluate_model(
    score_fn: ScoreFn,
    pdata: ProtocolData,
    model: str,
    evaluation: EvaluationConfig = DEFAULT_EVALUATION,
    users: np.ndarray | None = None,
    setting: str = DISCOVERY,
) -> pd.DataFrame:
    """`evaluate_lists` of `score_fn(user_idx)` (e.g. `Candidate.scores`) in one evaluation `setting`,
    scored and ranked one batch of users at a time: the users with test positives in that setting (or
    `users`), a fixed sample of them above `evaluation.users`. Equals `evaluate_scores` on the full
    score matrix when nobody is sampled out."""
    truth, exclude, _ = setting_truth(pdata, setting)
    users = users_with_truth(truth) if users is None else np.asarray(users, dtype=np.int64)
    users = sample_users(users, evaluation.users, evaluation.seed)
    hide = None if exclude is None else exclude[users]
    topk = ranked_lists(score_fn, users, max(KS), pdata.data.n_items, hide, evaluation.batch_memory_mb)
    return evaluate_lists(topk, pdata, model, users, evaluation.ci_level, setting)


def evaluate_settings(
    score_fn: ScoreFn,
    pdata: ProtocolData,
    model: str,
    evaluation: EvaluationConfig = DEFAULT_EVALUATION,
    users: np.ndarray | None = None,
    lists_fn: ListsFn | None = None,
) -> pd.DataFrame:
    """`evaluate_model` in the discovery setting and, when the test part has re-consumed items, the
    repeat setting; `repeat_share` says how many test positives are re-consumed. With `lists_fn` (the
    model's own lists, equal to ranking `score_fn`) nothing is scored.

    The settings share one scoring pass: one sample (`evaluation.users`) of the users with test positives
    in any setting (or of `users`), each setting judged on those of them with positives in it, so a user is
    scored once however many settings count them. Without sampling, each setting's users are exactly
    `evaluate_model`'s."""
    settings = SETTINGS if has_repeats(pdata) else (DISCOVERY,)
    truths = {s: setting_truth(pdata, s) for s in settings}
    if users is None:
        pools = {s: users_with_truth(truths[s][0]) for s in settings}
        pool = np.unique(np.concatenate(list(pools.values())))
    else:
        pool = np.unique(np.asarray(users, dtype=np.int64))
        pools = dict.fromkeys(settings, pool)
    sample = sample_users(pool, evaluation.users, evaluation.seed)
    member = {s: np.isin(sample, pools[s]) for s in settings}
    k, n_items = max(KS), pdata.data.n_items
    lists = {s: np.full((len(sample), k), -1, dtype=np.int64) for s in settings}
    if lists_fn is not None:  # the model ranks without scores: its own lists, setting by setting
        for s in settings:
            hide, rows = truths[s][1], sample[member[s]]
            lists[s][member[s]] = lists_fn(rows, k, None if hide is None else hide[rows])
    else:  # scored a batch at a time, each batch ranked for every setting
        rankings = {s: (member[s], None if truths[s][1] is None else truths[s][1][sample]) for s in settings}
        lists = ranked_lists_by(score_fn, sample, k, n_items, rankings, evaluation.batch_memory_mb)
    frames = [
        evaluate_lists(lists[s][member[s]], pdata, model, sample[member[s]], evaluation.ci_level, s) for s in settings
    ]
    # a setting with nobody to judge gives an empty frame: left out, so the others' dtypes decide the columns'
    out = pd.concat([f for f in frames if len(f)] or frames[:1], ignore_index=True)
    out["repeat_share"] = repeat_share(pdata)
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

    @property
    def lists_fn(self) -> ListsFn | None:
        """The model's own top-k lists (`Recommender.lists`), when it ranks without dense scores."""
        return self.model.lists


def valid_ndcg(
    score_fn: ScoreFn,
    pdata: ProtocolData,
    evaluation: EvaluationConfig = DEFAULT_EVALUATION,
    lists_fn: ListsFn | None = None,
) -> float:
    """NDCG@10 on the validation part (training items excluded), ranked in batches of users (or by `lists_fn`)."""
    users = sample_users(users_with_truth(pdata.valid_truth), evaluation.users, evaluation.seed)
    exclude = pdata.data.matrix[users]
    if lists_fn is not None:
        topk = lists_fn(users, 10, exclude)
    else:
        topk = ranked_lists(score_fn, users, 10, pdata.data.n_items, exclude, evaluation.batch_memory_mb)
    res = evaluate_topk(topk, pdata.valid_truth[users], (10,))
    return float(res.loc[res["metric"] == "ndcg", "value"].iloc[0])


def in_setting(results: pd.DataFrame, setting: str = DISCOVERY) -> pd.Series:
    """Rows of one evaluation setting (a table written before settings existed is all discovery)."""
    if "setting" not in results.columns:
        return pd.Series(setting == DISCOVERY, index=results.index)
    return results["setting"].fillna(DISCOVERY) == setting


def metric_value(
    results: pd.DataFrame,
    model: str,
    metric: str,
    k: int,
    protocol: str,
    slice_: str = ALL,
    setting: str = DISCOVERY,
) -> float:
    row = results[
        (results["model"] == model)
        & (results["metric"] == metric)
        & (results["k"] == k)
        & (results["protocol"] == protocol)
        & (results["slice"] == slice_)
        & in_setting(results, setting)
    ]
    return float(row["value"].iloc[0]) if len(row) else float("nan")


def effective_target(results: pd.DataFrame, target: str, protocol: str | None = None) -> str:
    """The setting the champion is chosen on: `target`, or discovery when `protocol` (default: the
    champion's, `splits.champion_protocol`) has no repeat rows."""
    protocol = protocol or S.champion_protocol(results["protocol"])
    if target not in TARGETS:
        raise ValueError(f"unknown evaluation target {target!r}; known: {', '.join(TARGETS)}")
    here = results["protocol"] == protocol
    repeats = (in_setting(results, REPEAT) & here).any()
    if repeats and not (in_setting(results, DISCOVERY) & here).any():
        return REPEAT  # every test positive is a repeat: there is nothing to discover on this split
    return target if repeats else DISCOVERY


def target_value(results: pd.DataFrame, model: str, target: str, metric: str = "ndcg", k: int = 10) -> float:
    """`model`'s champion metric (NDCG@10, temporal, all users) on `target`: one setting, or for
    `blended` the mean of discovery and repeat. NaN when the model has no such value. On the random
    protocol for a log without time (no temporal rows)."""
    protocol = S.champion_protocol(results["protocol"])
    target = effective_target(results, target, protocol)
    settings = SETTINGS if target == BLENDED else (target,)
    values = [metric_value(results, model, metric, k, protocol, setting=s) for s in settings]
    return float(np.mean(values))


def rank_models(results: pd.DataFrame, target: str = DISCOVERY) -> pd.DataFrame:
    """Every model with its champion metric on `target` (`model`, `value`), best first, NaN dropped."""
    models = list(dict.fromkeys(results["model"]))
    table = pd.DataFrame({"model": models, "value": [target_value(results, m, target) for m in models]})
    table = table.dropna(subset=["value"])
    return table.sort_values("value", ascending=False, kind="stable").reset_index(drop=True)


def summarise(results: pd.DataFrame, models: Iterable[str]) -> pd.DataFrame:
    """Wide view: one row per model and protocol with the headline metrics at K=10 (all users, discovery)."""
    sub = results[
        (results["slice"] == ALL) & (results["k"] == 10) & results["model"].isin(list(models)) & in_setting(results)
    ]
    return sub.pivot_table(index=["protocol", "model"], columns="metric", values="value").reset_index()


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def evaluate_artifact(
    art: ServingArtifact,
    pdata: ProtocolData,
    name: str,
    evaluation: EvaluationConfig = DEFAULT_EVALUATION,
    setting: str = DISCOVERY,
) -> pd.DataFrame:
    """Evaluate a serving artifact on a protocol's test part in one evaluation `setting` (repeat: the
    API with `exclude_seen=false`), the way the API would serve it: each
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
    known = pos >= 0

    def score(users: np.ndarray) -> np.ndarray:
        scored = art.scorer.score_many(hist[users], user_idx=upos[users])
        out = np.full((len(users), len(items)), -np.inf, dtype=np.float32)
        out[:, known] = scored[:, pos[known]]
        return out

    return evaluate_model(score, pdata, name, evaluation, setting=setting)


def artifact_metrics(results: pd.DataFrame) -> dict[str, float]:
    """The metrics an artifact records: every metric at K=10 over all users (`"ndcg@10": ...`, discovery;
    `"repeat_ndcg@10": ...` when the repeat setting was evaluated)."""
    rows = results[(results["slice"] == ALL) & (results["k"] == 10)]
    out = {f"{r.metric}@{r.k}": float(r.value) for r in rows[in_setting(rows)].itertuples()}
    out.update({f"repeat_{r.metric}@{r.k}": float(r.value) for r in rows[in_setting(rows, REPEAT)].itertuples()})
    return out


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
    # moments and ANN indexes for the candidate path (large catalogs; see contract/retrieval.py), and
    # what that path costs here: recall of the exact top-10 among its top-10 (a sample of users)
    retrieval = retrieval_arrays(scorer, history)
    metrics = dict(metrics or {}) | {"candidates_recall@10": round(candidate_recall(scorer, retrieval, history), 4)}
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
        metrics=metrics,
        trained_until=_utc_iso(last),
        retrieval=retrieval,
    )


def _utc_iso(ts: object) -> str:
    if ts is None or pd.isna(ts):
        return ""
    stamp = pd.Timestamp(ts)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return stamp.isoformat()
