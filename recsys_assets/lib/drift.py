"""Drift of a live-event window against its reference window(s), and the verdict that triggers a retrain.

Public: `interaction_features`, `served_features`, `window_performance`, `detect_drift` (-> `DriftResult`) and
`renderer_scripts`.

Every feature is measured relative to the champion's training data, so its distribution does not depend
on how long the window is: a window of an hour and one of a day from the same traffic look alike.

Data drift, one row per cleaned event (`interaction_features`):

- `event_type`: the funnel mix (view, click, favorite, add_to_cart, purchase, rating);
- `rating`: the score of rating events (left out when either side has no rating);
- `user_history`: log1p of the number of distinct items the user has in the champion's training data
  (0 for a user the champion never saw): a different population arriving;
- `item_popularity`: log1p of the number of distinct users the item has in the champion's training data
  (0 for an item the champion never saw): traffic moving to the head, the tail or elsewhere;
- `new_user`, `new_item` (0/1): the user / item has no event in the champion's data (cold start; a
  catalog item never interacted with counts as new).

Prediction drift, one row per impression the API served (`served_features`):

- `served_item`: the item shown, as its id for the champion's `SERVED_TOP_ITEMS` most popular items,
  `(other)` for the rest of its catalog and `(new)` for items it does not know (a distance over
  thousands of raw ids would measure sampling noise, not drift);
- `served_popularity`: log1p of the shown item's popularity, as `item_popularity`.

Each feature is compared with a distance that does not grow with the sample size, so a verdict does not
flip because a window is longer: the normed Wasserstein distance (Wasserstein / std of the reference)
for numbers and the Jensen-Shannon distance for categories; a feature has drifted when its distance is
at least `drift_threshold`.

Performance (`window_performance`): the online list CTR and conversion of every list served in the
window (`recsys_assets.contract.attribution`), and the champion's offline NDCG@10 on the window: for users it
knows, it ranks from their training history and the relevant items are those they touched in the window
(every event counts as a positive and the training history is masked except those items, as in the
offline evaluation, so the number compares with the champion's own NDCG@10).

Verdict (`detect_drift`): the window has drifted, and a retrain is due, when

    share of data features drifted >= drift_share   OR   ctr < min_ctr   OR   ndcg@10 < min_ndcg

(each floor only when set). Prediction drift is reported but does not decide: what the model serves
changes whenever its input does, so on its own it adds no evidence. With fewer than `drift_min_rows`
events on either side there is no verdict (`decided` is False, `drifted` False, and no row of the table
counts as drifted); the scores that could be computed are still shown.
"""

from __future__ import annotations

import html
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys_assets.contract import attribution
from recsys_assets.contract.artifact import ServingArtifact
from recsys_assets.contract.events import IMPRESSION
from recsys_assets.contract.settings import CleaningConfig, DriftConfig
from recsys_assets.lib.evaluation.metrics import evaluate_topk, exclusion_matrix
from recsys_assets.lib.ingest.cleaning import clean_events
from recsys_assets.lib.ingest.readers import RAW_COLUMNS

DATA, PREDICTION, PERFORMANCE = "data", "prediction", "performance"
DATA_FEATURES: tuple[str, ...] = ("event_type", "rating", "user_history", "item_popularity", "new_user", "new_item")
PREDICTION_FEATURES: tuple[str, ...] = ("served_item", "served_popularity")
CATEGORICAL_FEATURES: frozenset[str] = frozenset({"event_type", "new_user", "new_item", "served_item"})
FLAG_FEATURES: frozenset[str] = frozenset({"new_user", "new_item"})
NUMERICAL_STATTEST = "wasserstein"
CATEGORICAL_STATTEST = "jensenshannon"
FLOOR = "floor"
PERFORMANCE_METRICS: tuple[str, ...] = ("ctr", "conversion", "ndcg@10")
TABLE_COLUMNS: tuple[str, ...] = (
    "metric",
    "kind",
    "score",
    "threshold",
    "drifted",
    "stattest",
    "current_value",
    "reference_value",
)
SERVED_TOP_ITEMS = 20
OTHER_ITEM = "(other)"
NEW_ITEM = "(new)"
TOO_FEW = "too few events"


@dataclass
class DriftResult:
    """One window's drift report.

    - `drifted`: the verdict (retrain); `decided`: False when there were too few events for one;
    - `data_drift_share`: drifted data features / data features compared (NaN without a verdict);
    - `reasons`: one line per fact behind the verdict or worth a look, e.g. "new_item: jensenshannon
      0.52 >= 0.1";
    - `table`: one row per compared feature and performance metric (columns `TABLE_COLUMNS`): `score`
      is the distance (for performance rows the current value), `current_value` / `reference_value`
      the feature's mean on each side (the share of 1s for a flag, NaN for other categories);
    - `n_reference`, `n_current`: cleaned events (impressions excluded) on each side;
    - `html`: the Evidently report with the verdict on top, one self-contained file (no CDN);
    - `performance`: `window_performance` of each side, keyed `reference` / `current`.
    """

    drifted: bool
    decided: bool
    data_drift_share: float
    reasons: list[str]
    table: pd.DataFrame
    n_reference: int
    n_current: int
    html: str
    performance: dict[str, dict[str, float]] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Champion:
    """The champion's id maps and per-user / per-item training counts, built once per report."""

    art: ServingArtifact
    users: pd.Index
    items: pd.Index
    user_counts: np.ndarray
    item_counts: np.ndarray
    top_items: frozenset[str]

    @classmethod
    def of(cls, art: ServingArtifact) -> _Champion:
        history = sp.csr_matrix(art.history)
        item_counts = np.diff(history.tocsc().indptr)
        order = np.lexsort((np.arange(len(item_counts)), -item_counts))[:SERVED_TOP_ITEMS]
        return cls(
            art=art,
            users=pd.Index(art.user_ids.astype(str)),
            items=pd.Index(art.item_ids.astype(str)),
            user_counts=np.diff(history.indptr),
            item_counts=item_counts,
            top_items=frozenset(art.item_ids.astype(str)[order[item_counts[order] > 0]].tolist()),
        )

    def user_index(self, ids: pd.Series) -> np.ndarray:
        return self.users.get_indexer(ids.astype(str))

    def item_index(self, ids: pd.Series) -> np.ndarray:
        return self.items.get_indexer(ids.astype(str))


def _counts(index: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Training count per row (0 where the id is unknown, index -1)."""
    return np.where(index >= 0, counts[np.maximum(index, 0)], 0)


def _interactions(raw_rows: pd.DataFrame, cleaning: CleaningConfig) -> pd.DataFrame:
    """The window's cleaned events (impressions set aside); no k-core filter: every event of a window counts."""
    raw = raw_rows.reindex(columns=list(RAW_COLUMNS))
    return clean_events(raw, cleaning.model_copy(update={"kcore_user": 0, "kcore_item": 0})).interactions


def _interaction_features(inter: pd.DataFrame, champ: _Champion) -> pd.DataFrame:
    uidx, iidx = champ.user_index(inter["user_id"]), champ.item_index(inter["item_id"])
    is_rating = (inter["event_type"] == "rating").to_numpy()
    user_counts, item_counts = _counts(uidx, champ.user_counts), _counts(iidx, champ.item_counts)
    return pd.DataFrame(
        {
            "event_type": pd.Categorical(inter["event_type"].astype(str)),
            "rating": np.where(is_rating, inter["value"].to_numpy(dtype="float64"), np.nan),
            "user_history": np.log1p(user_counts).astype("float64"),
            "item_popularity": np.log1p(item_counts).astype("float64"),
            # new to the champion's data: unknown, or known (a catalog item, say) with no event in it
            "new_user": (user_counts == 0).astype("int8"),
            "new_item": (item_counts == 0).astype("int8"),
        }
    )


def interaction_features(raw_rows: pd.DataFrame, champion: ServingArtifact, cleaning: CleaningConfig) -> pd.DataFrame:
    """One row per event of the window cleaned by `cleaning` (impressions and rejected rows left out),
    columns `DATA_FEATURES`, each relative to the champion's training data (see the module docstring)."""
    return _interaction_features(_interactions(raw_rows, cleaning), _Champion.of(champion))


def _impressions(raw_rows: pd.DataFrame) -> pd.DataFrame:
    events = attribution.prepare_events(raw_rows)
    return events[(events["event_type"] == IMPRESSION) & events["item_id"].notna()]


def _served_features(imp: pd.DataFrame, champ: _Champion) -> pd.DataFrame:
    iidx = champ.item_index(imp["item_id"])
    ids = imp["item_id"].astype(str).to_numpy()
    label = np.where(iidx < 0, NEW_ITEM, np.where(np.isin(ids, list(champ.top_items)), ids, OTHER_ITEM))
    return pd.DataFrame(
        {
            "served_item": pd.Categorical(label),
            "served_popularity": np.log1p(_counts(iidx, champ.item_counts)).astype("float64"),
        }
    )


def served_features(raw_rows: pd.DataFrame, champion: ServingArtifact) -> pd.DataFrame:
    """One row per impression of the window, columns `PREDICTION_FEATURES` (see the module docstring)."""
    return _served_features(_impressions(raw_rows), _Champion.of(champion))


# ---------------------------------------------------------------------------------------------
# Performance
# ---------------------------------------------------------------------------------------------


def _champion_ndcg(inter: pd.DataFrame, champ: _Champion, k: int) -> tuple[float, int]:
    """NDCG@k of the champion on the window's events of users and items it knows, and how many users."""
    uidx, iidx = champ.user_index(inter["user_id"]), champ.item_index(inter["item_id"])
    known = (uidx >= 0) & (iidx >= 0)
    if not known.any():
        return math.nan, 0
    users, rows = np.unique(uidx[known], return_inverse=True)
    truth = sp.csr_matrix(
        (np.ones(int(known.sum())), (rows, iidx[known])), shape=(len(users), len(champ.items)), dtype=np.float64
    )
    truth.sum_duplicates()
    history = sp.csr_matrix(champ.art.history)[users]
    topk = champ.art.scorer.topk(history, k, user_idx=users, exclude=exclusion_matrix(history, truth))
    res = evaluate_topk(topk, truth, ks=(k,))
    value = res.loc[res["metric"] == "ndcg", "value"].iloc[0]
    return float(value), int(res["n_users"].iloc[0])


def _performance(raw_rows: pd.DataFrame, inter: pd.DataFrame, champ: _Champion, k: int) -> dict[str, float]:
    t = attribution.totals(attribution.served_lists(attribution.prepare_events(raw_rows)))
    ndcg, n_users = _champion_ndcg(inter, champ, k)
    return {
        "ctr": t["ctr"],
        "conversion": t["conversion"],
        "lists": t["lists"],
        "impressions": t["impressions"],
        f"ndcg@{k}": ndcg,
        "ndcg_users": n_users,
    }


def window_performance(
    raw_rows: pd.DataFrame, champion: ServingArtifact, cleaning: CleaningConfig, k: int = 10
) -> dict[str, float]:
    """Online `ctr` and `conversion` of the lists served in the window (with `lists`, `impressions`), and
    the champion's offline `ndcg@<k>` on the window's events cleaned by `cleaning` (NaN when no user and
    item of the window is known to it; `ndcg_users` says how many users it averages)."""
    return _performance(raw_rows, _interactions(raw_rows, cleaning), _Champion.of(champion), k)


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


def _summary_value(name: str, values: pd.Series) -> float:
    values = values.dropna()
    if values.empty or (name in CATEGORICAL_FEATURES and name not in FLAG_FEATURES):
        return math.nan
    return float(values.astype("float64").mean())


def _evidently(
    reference: pd.DataFrame, current: pd.DataFrame, features: list[str], config: DriftConfig
) -> tuple[dict[str, float], str]:
    """Run one Evidently report over `features` of the two frames: the distance per feature and the HTML."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import DriftedColumnsCount, ValueDrift

    numerical = [f for f in features if f not in CATEGORICAL_FEATURES]
    categorical = [f for f in features if f in CATEGORICAL_FEATURES]
    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical)

    def dataset(frame: pd.DataFrame) -> Dataset:
        # categories as plain text: Evidently counts values, and unused pandas categories would add empty bins
        frame = frame[features].astype({c: "object" for c in categorical})
        return Dataset.from_pandas(frame, data_definition=definition)

    method = {f: CATEGORICAL_STATTEST if f in CATEGORICAL_FEATURES else NUMERICAL_STATTEST for f in features}
    metrics: list = []
    data_features = [f for f in features if f in DATA_FEATURES]
    if data_features:
        metrics.append(
            DriftedColumnsCount(
                columns=data_features,
                drift_share=config.share,
                num_method=NUMERICAL_STATTEST,
                cat_method=CATEGORICAL_STATTEST,
                threshold=config.threshold,
            )
        )
    metrics += [ValueDrift(column=f, method=method[f], threshold=config.threshold) for f in features]
    with warnings.catch_warnings():
        # Evidently's own pandas calls (`replace` downcasting) warn on every column
        warnings.simplefilter("ignore", FutureWarning)
        snapshot = Report(metrics).run(dataset(current), dataset(reference))
    scores = {
        m["config"]["column"]: float(m["value"])
        for m in snapshot.dict()["metrics"]
        if m["config"]["type"].endswith(":ValueDrift")
    }
    return scores, snapshot.get_html_str(as_iframe=False)


def renderer_scripts() -> dict[str, str]:
    """Evidently's page renderer, the 3.5 MB script each report inlines, by the versioned file name a stored
    report refers to it with (`contract/shared_scripts.py`)."""
    import evidently
    from evidently.legacy.utils import dashboard

    with open(Path(dashboard.STATIC_PATH) / "index.js", encoding="utf-8") as fh:  # what its pages inline
        return {f"evidently-{evidently.__version__}.js": fh.read()}


def _stack(inter: pd.DataFrame, served: pd.DataFrame) -> pd.DataFrame:
    """Events and impressions in one frame; each feature is defined on its own rows only (NaN elsewhere)."""
    return pd.concat(
        [inter.astype({"event_type": "object"}), served.astype({"served_item": "object"})],
        ignore_index=True,
    ).reindex(columns=[*DATA_FEATURES, *PREDICTION_FEATURES])


def _fmt(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3g}"


def _summary_html(result: DriftResult, share: float) -> str:
    """The verdict, its reasons and the table, to head the Evidently report (`share`: the retrain share)."""
    verdict = "drift: retrain" if result.drifted else "no drift" if result.decided else "no verdict"
    rows = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(v if isinstance(v, str) else _fmt(v))}</td>"
            for v in (
                r.metric,
                r.kind,
                r.score,
                r.threshold,
                "yes" if r.drifted else "no",
                r.stattest,
                r.current_value,
                r.reference_value,
            )
        )
        + "</tr>"
        for r in result.table.itertuples()
    )
    head = "".join(f"<th>{c}</th>" for c in TABLE_COLUMNS)
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in result.reasons) or "<li>nothing drifted</li>"
    return (
        '<section style="font-family:sans-serif;margin:16px">'
        f"<h1>Drift verdict: {html.escape(verdict)}</h1>"
        f"<p>{result.n_current} events in the window, {result.n_reference} in the reference; "
        f"data drift share {_fmt(result.data_drift_share)} (retrain at &ge; {share:g}).</p>"
        f"<ul>{reasons}</ul>"
        f'<table border="1" cellpadding="4" style="border-collapse:collapse"><tr>{head}</tr>{rows}</table>'
        "</section>"
    )


def _feature_rows(
    features: list[str], frames: dict[str, pd.DataFrame], scores: dict[str, float], decided: bool, threshold: float
) -> list[dict[str, object]]:
    """One table row per compared data or prediction feature."""
    rows = []
    for f in features:
        score = scores.get(f, math.nan)
        rows.append(
            {
                "metric": f,
                "kind": DATA if f in DATA_FEATURES else PREDICTION,
                "score": score,
                "threshold": threshold,
                "drifted": decided and bool(score >= threshold),
                "stattest": CATEGORICAL_STATTEST if f in CATEGORICAL_FEATURES else NUMERICAL_STATTEST,
                "current_value": _summary_value(f, frames["current"][f]),
                "reference_value": _summary_value(f, frames["reference"][f]),
            }
        )
    return rows


def _performance_rows(perf: dict[str, dict[str, float]], decided: bool, config: DriftConfig) -> list[dict[str, object]]:
    """One table row per performance metric; a metric with a floor drifts when the window is below it."""
    floors = {"ctr": config.min_ctr, "conversion": None, "ndcg@10": config.min_ndcg}
    rows = []
    for name in PERFORMANCE_METRICS:
        cur, ref, floor = perf["current"][name], perf["reference"][name], floors[name]
        breached = floor is not None and not math.isnan(cur) and cur < floor
        rows.append(
            {
                "metric": name,
                "kind": PERFORMANCE,
                "score": cur,
                "threshold": math.nan if floor is None else float(floor),
                "drifted": decided and breached,
                "stattest": FLOOR if floor is not None else "",
                "current_value": cur,
                "reference_value": ref,
            }
        )
    return rows


def _reasons(
    table: pd.DataFrame, data_rows: pd.DataFrame, share: float, n_ref: int, n_cur: int, config: DriftConfig
) -> list[str]:
    """One line per fact behind the verdict or worth a look."""
    if min(n_ref, n_cur) < config.min_rows:
        return [
            f"{TOO_FEW} for a verdict: {n_cur} in the window, {n_ref} in the reference "
            f"(at least {config.min_rows} needed on each side)"
        ]
    reasons: list[str] = []
    n_drifted = int(data_rows["drifted"].sum())
    if n_drifted:
        rel = ">=" if share >= config.share else "<"
        reasons.append(
            f"data drift: {n_drifted} of {len(data_rows)} features drifted (share {share:.2f} {rel} {config.share:g})"
        )
    for r in table[table["drifted"]].itertuples():
        if r.kind == PERFORMANCE:
            reasons.append(f"{r.metric}: {r.score:.3g} < floor {r.threshold:g}")
        else:
            note = ""
            if r.kind == PREDICTION:
                note = " (prediction drift: reported, not deciding)"
            elif r.metric not in config.features:
                note = " (reported, not deciding: not in drift_features)"
            reasons.append(f"{r.metric}: {r.stattest} {r.score:.3g} >= {r.threshold:g}{note}")
    return reasons


def detect_drift(
    reference_rows: pd.DataFrame, current_rows: pd.DataFrame, champion: ServingArtifact, config: DriftConfig
) -> DriftResult:
    """Compare a window (`current_rows`) with its reference, both raw event-log rows, and decide whether
    the champion should be retrained (the rule is in the module docstring)."""
    champ = _Champion.of(champion)
    raw = {"reference": reference_rows, "current": current_rows}
    inter = {side: _interactions(rows, config.cleaning) for side, rows in raw.items()}
    frames = {
        side: _stack(_interaction_features(inter[side], champ), _served_features(_impressions(raw[side]), champ))
        for side in raw
    }
    perf = {side: _performance(raw[side], inter[side], champ, 10) for side in raw}
    n_ref, n_cur = len(inter["reference"]), len(inter["current"])
    decided = min(n_ref, n_cur) >= config.min_rows

    features = [
        f
        for f in (*DATA_FEATURES, *PREDICTION_FEATURES)
        if frames["reference"][f].notna().any() and frames["current"][f].notna().any()
    ]
    scores, report_html = _evidently(frames["reference"], frames["current"], features, config) if features else ({}, "")
    rows = _feature_rows(features, frames, scores, decided, config.threshold) + _performance_rows(perf, decided, config)
    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS)).astype({"drifted": bool})

    # the data features that decide (`drift_features`); the others are reported only
    data_rows = table[(table["kind"] == DATA) & table["metric"].isin(list(config.features))]
    share = float(data_rows["drifted"].mean()) if decided and len(data_rows) else math.nan
    perf_breached = table[(table["kind"] == PERFORMANCE) & table["drifted"]]
    drifted = decided and ((not math.isnan(share) and share >= config.share) or not perf_breached.empty)

    result = DriftResult(
        drifted=bool(drifted),
        decided=decided,
        data_drift_share=share,
        reasons=_reasons(table, data_rows, share, n_ref, n_cur, config),
        table=table,
        n_reference=n_ref,
        n_current=n_cur,
        html="",
        performance=perf,
    )
    summary = _summary_html(result, config.share)
    if report_html and "<body>" in report_html:
        result.html = report_html.replace("<body>", f"<body>{summary}", 1)
    else:
        result.html = (
            '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Drift report</title></head>'
            f"<body>{summary}<p>No feature has values on both sides: nothing to compare.</p></body></html>"
        )
    return result
