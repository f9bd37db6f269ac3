"""Off-policy estimates: a candidate's clicks per list, judged on the lists another policy served and logged.

The logged data is one row per impression (`contract.attribution.impressions`): the list, the position,
the item, whether it was clicked, and the probability `propensity` with which the logging policy showed
that item at that position (`contract/exploration.py`). For each logged list the candidate ranks its own
top-k for the same user at the same moment (`candidate_lists`: the user's events before the list was
served, on the candidate's own trajectory: without the clicks the logged lists brought on items the candidate
had not shown), and the estimators compare the two lists.

What is estimated is the candidate's expected clicked impressions per list, which equals its list CTR
when a list gets at most one click (the replay's one rating per visit). The click model is the item
model: whether a user clicks an item does not depend on its position or on the other items shown
(Li et al., "Offline Evaluation of Ranking Policies with Click Models", KDD 2018), and (by default) a user
clicks an item once, so an item counts in the candidate's first list that shows it to that user only
(`first_showings`). Under it:

* `ips`: Open Bandit Pipeline's `SlateIndependentIPS`, each logged impression weighted by
  1[item in the candidate's list] / propensity. The exploration puts an item at one position only, so
  its propensity at that position is its probability of being in the list at all, which is what the
  item model needs. Unbiased when every item of the candidate's list could have been logged.
* `snips`: self-normalised IPS (Swaminathan and Joachims, "The Self-normalized Estimator for Counterfactual
  Learning", NIPS 2015) under the same item model. Per list, a is `ips`'s weighted clicks, b the same
  weights without the clicks, and c the candidate's items that can earn a click there (`eligible`, known
  exactly); b's expectation is c when every one of them could have been logged, so b is the weights' control
  variate, and the value is (mean a / mean b) * mean c: the click rate of the weighted impressions times the
  eligible items per list. Items the logging policy could not show get the click rate of those it could
  (`ips` counts them zero). Biased by O(1 / lists), steadier than `ips` when a few small propensities carry
  large weights; its interval is the bootstrap of its delta-method linearisation per list. Not obp's
  `SelfNormalizedSlateIndependentIPS` (obp 0.5; the 0.4 pinned here has none): that divides each position's
  weighted clicks by the mean weight of that position over all lists, so each position counts as holding one
  item that can earn a click; under the once-per-user rule most of a candidate's lists hold none or one, and
  it reads about (positions) / (eligible items per list) times the value (0 / 0 at a position that never
  holds one).
* `dr`: doubly robust, written here because obp's `DoublyRobust` takes dense (lists x items x positions)
  arrays and a regression model per action, which a catalogue of items cannot afford. Its reward model is
  each item's click rate times its user's factor (the user's click rate over the overall one), each shrunk
  to the overall rate and fitted on the other half of the lists (cross-fitting): the model's value of the
  candidate's list, plus the IPS-weighted residuals of the logged impressions. Under the once-per-user
  rule the rates are learnt from each item's first logged showing to each user (`first_logged_showings`),
  the question a candidate's first showing asks; rates over every impression would count the passed-over
  repeats of the logging policy's own list against every item. It stays unbiased where IPS is, and gives
  an answer (the model's) for items the logging policy could not show, where IPS counts zero. In
  `lib/doubly_robust.py`, with its interval: users resampled and the reward model fitted again each time.
* `ips_position` and `rips`: obp's `SlateIndependentIPS` with the candidate's item at the same position,
  and `SlateRewardInteractionIPS` (the cascade: the candidate's first j items equal the logged ones). They
  need the candidate to put the logged items at the logged positions, so they only fit a candidate close
  to the logging policy; they are reported for that case (a model judged on its own logs, say).

The other intervals are obp's bootstrap (`estimate_confidence_interval_by_bootstrap`) over the per-list estimates:
obp's own slate interval method sums each list with a scan of all rows per list, quadratic in the lists.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from obp.ope import SlateIndependentIPS, SlateRewardInteractionIPS
from obp.utils import estimate_confidence_interval_by_bootstrap

from recsys_assets.contract import attribution
from recsys_assets.contract.artifact import ServingArtifact
from recsys_assets.contract.events import IMPRESSION
from recsys_assets.lib.doubly_robust import doubly_robust

ESTIMATORS: tuple[str, ...] = ("ips", "snips", "dr", "ips_position", "rips")
ESTIMATE_COLUMNS: tuple[str, ...] = (
    "model",
    "estimator",
    "value",
    "ci_low",
    "ci_high",
    "lists",
    "matched_per_list",
    "logged_value",
    "logged_ctr",
)


# ranks one list: user history (item indices, weights), k -> item indices of the candidate's top-k
Ranker = Callable[[np.ndarray, np.ndarray, int], np.ndarray]


def candidate_lists(
    rank: Ranker,
    item_ids: Sequence[str],
    lists: pd.DataFrame,
    history: pd.DataFrame,
    answers: pd.DataFrame | None = None,
) -> dict[str, list[str]]:
    """The candidate's list for each logged list (`recommendation_id`, `user_id`, `served_at`, `k`), ranked
    on the user's `history` rows (`user_id`, `item_id`, `timestamp`, `weight`) from before the list was served.
    Items the candidate does not know are left out of the history, as the API leaves them out.

    `answers` (`user_id`, `item_id`, `timestamp`; `list_answers`): the feedback the logged lists themselves
    brought, a click on a served item and what followed it. The candidate would not have caused it unless it
    had shown the user that item too, so from an item's first answer on, the user's rows on that item are left
    out of the history until one of the candidate's earlier lists has shown it. Otherwise the logging policy's
    clicks would use up, for the candidate, the items the user takes (they are seen, so left out of its lists)
    and steer its ranking: its lists would be those of the logging policy's trajectory, not of its own. On the
    ml-100k replay that trajectory alone puts a perfect per-list estimate 15-17% under what the candidate
    realises serving itself (`docs/benchmarks.md`)."""
    index = {str(it): j for j, it in enumerate(item_ids)}
    hist = history.assign(j=history["item_id"].astype(str).map(index), user_id=history["user_id"].astype(str))
    hist = hist[hist["j"].notna()].assign(timestamp=lambda h: pd.to_datetime(h["timestamp"], utc=True))
    hist = hist.sort_values("timestamp", kind="stable")
    hist = hist.assign(item_id=hist["item_id"].astype(str), _answered=False)
    if answers is not None and len(answers):
        first = (
            answers.assign(user_id=answers["user_id"].astype(str), item_id=answers["item_id"].astype(str))
            .assign(timestamp=lambda a: pd.to_datetime(a["timestamp"], utc=True))
            .groupby(["user_id", "item_id"])["timestamp"]
            .min()
            .rename("_since")
        )
        since = hist.join(first, on=["user_id", "item_id"])["_since"]
        hist["_answered"] = since.notna() & (hist["timestamp"] >= since)
    by_user = {
        u: (g["timestamp"].to_numpy(), g["j"].to_numpy(np.int64), g["weight"].to_numpy(), g["_answered"].to_numpy(bool))
        for u, g in hist.groupby("user_id", sort=False)
    }
    empty = (np.empty(0, "datetime64[ns]"), np.empty(0, np.int64), np.empty(0), np.empty(0, bool))
    shown: dict[str, set[int]] = {}
    out: dict[str, list[str]] = {}
    order = lists.assign(_t=pd.to_datetime(lists["served_at"], utc=True)).sort_values("_t", kind="stable")
    for rec, user, at, k in zip(
        order["recommendation_id"], order["user_id"].astype(str), order["_t"].to_numpy(), order["k"], strict=True
    ):
        times, items, weights, logged = by_user.get(user, empty)
        n = int(np.searchsorted(times, at, side="left"))
        before = shown.setdefault(user, set())
        keep = ~logged[:n]
        if not keep.all():
            keep |= np.isin(items[:n], np.fromiter(before, np.int64, len(before)))
        idx, inverse = np.unique(items[:n][keep], return_inverse=True)
        w = np.bincount(inverse, weights=weights[:n][keep].astype(np.float64), minlength=len(idx)).astype(np.float32)
        top = [j for j in rank(idx, w, int(k)).tolist() if j >= 0]
        before.update(top)
        out[str(rec)] = [str(item_ids[j]) for j in top]
    return out


def list_answers(events: pd.DataFrame) -> pd.DataFrame:
    """The feedback events (prepared log rows, `attribution.prepare_events`) that answered a served list: those
    naming its `recommendation_id`, as `user_id`, `item_id`, `timestamp`."""
    rows = events[(events["event_type"] != IMPRESSION) & events["recommendation_id"].notna()]
    return rows[["user_id", "item_id", "timestamp"]].dropna(subset=["user_id", "item_id"]).reset_index(drop=True)


def first_showings(lists: pd.DataFrame, candidate: Mapping[str, Sequence[str]]) -> dict[str, set[str]]:
    """For each logged list, the candidate's items it had not shown that user in an earlier list.

    A user clicks an item once: after a click the item is in their history (and left out of their lists), and
    an item they have passed over keeps whatever chance it had. Crediting every list with its items would
    count one click again for each list that repeats the item; a policy that keeps showing the same items
    (popularity) would be credited many times over. So an item counts in the candidate's first list that
    shows it to the user, and the logged click that answers it there is what the estimate weighs."""
    order = lists.assign(_t=pd.to_datetime(lists["served_at"], utc=True)).sort_values("_t", kind="stable")
    shown: dict[str, set[str]] = {}
    out: dict[str, set[str]] = {}
    for rec, user in zip(order["recommendation_id"].astype(str), order["user_id"].astype(str), strict=True):
        before = shown.setdefault(user, set())
        items = candidate.get(rec, [])
        out[rec] = {it for it in items if it not in before}
        before.update(items)
    return out


def first_logged_showings(logged: pd.DataFrame) -> pd.Series:
    """Per impression (indexed like `logged`): whether it is the first time the logged lists showed that item to
    that user. Under the once-per-user rule these are the impressions whose click answers the question a
    candidate's first showing asks; a repeated impression of an item the user passed over is clicked far less
    often (on the ml-100k replay 36% against 2.4% over all impressions)."""
    order = logged.assign(_t=pd.to_datetime(logged["served_at"], utc=True)).sort_values(
        ["_t", "recommendation_id", "position"], kind="stable"
    )
    first = ~order.duplicated(["user_id", "item_id"])
    return first.reindex(logged.index)


def artifact_history(art: ServingArtifact) -> pd.DataFrame:
    """An artifact's own history matrix as history rows, all before any served list (what the API ranks from
    before the user's live events)."""
    coo = art.history.tocoo()
    return pd.DataFrame(
        {
            "user_id": art.user_ids[coo.row].astype(str),
            "item_id": art.item_ids[coo.col].astype(str),
            "timestamp": pd.Timestamp("1970-01-01", tz="UTC"),
            "weight": coo.data.astype(np.float64),
        }
    )


def _interval(samples: np.ndarray, alpha: float, n_boot: int, seed: int) -> tuple[float, float]:
    if len(samples) < 2 or np.all(samples == samples[0]):
        value = float(samples.mean()) if len(samples) else math.nan
        return value, value
    ci = estimate_confidence_interval_by_bootstrap(
        samples=samples, alpha=alpha, n_bootstrap_samples=n_boot, random_state=seed
    )
    return float(ci[f"{100 * (1 - alpha)}% CI (lower)"]), float(ci[f"{100 * (1 - alpha)}% CI (upper)"])


def estimate(
    logged: pd.DataFrame,
    candidate: Mapping[str, Sequence[str]],
    alpha: float = 0.05,
    n_bootstrap: int = 2000,
    seed: int = 0,
    eligible: Mapping[str, set[str]] | None = None,
    first_shown: pd.Series | None = None,
) -> dict[str, dict[str, float]]:
    """Every estimator's value and interval for the candidate's lists (`candidate`: recommendation_id ->
    item ids, best first) on the `logged` impressions (`recommendation_id`, `position`, `item_id`,
    `propensity`, `clicked`) of the lists it names. Values are clicks per list. `eligible` (per list, the
    items that can earn a click there, `first_showings`): default every item of the candidate's list.
    `first_shown` (indexed like `logged`): the impressions DR's reward model learns from, when an item earns a
    click at its first showing to a user only (`first_logged_showings`); default every impression."""
    if eligible is None:
        eligible = {r: set(items) for r, items in candidate.items()}
    logged = logged[logged["recommendation_id"].isin(list(candidate))].sort_values(
        ["recommendation_id", "position"], kind="stable"
    )
    rec = logged["recommendation_id"].astype(str).to_numpy()
    slate_codes, slate = np.unique(rec, return_inverse=True)
    n = len(slate_codes)
    if n == 0:
        return {name: {"value": math.nan, "ci_low": math.nan, "ci_high": math.nan} for name in ESTIMATORS}
    item = logged["item_id"].astype(str).to_numpy()
    position = logged["position"].to_numpy(np.int64)
    reward = logged["clicked"].to_numpy(np.float64)
    pscore = np.clip(logged["propensity"].to_numpy(np.float64), 1e-12, 1.0)
    model_rows = np.ones(len(rec), bool) if first_shown is None else first_shown.loc[logged.index].to_numpy(bool)
    in_list = np.fromiter((it in eligible[r] for r, it in zip(rec, item, strict=True)), bool, len(rec))
    same_place = np.fromiter(
        (
            p - 1 < len(candidate[r]) and candidate[r][p - 1] == it and it in eligible[r]
            for r, it, p in zip(rec, item, position, strict=True)
        ),
        bool,
        len(rec),
    )
    # the cascade: the candidate matches every logged item up to this position
    cascade = pd.Series(same_place).groupby(slate).cummin().to_numpy(bool)
    pscore_cascade = np.exp(pd.Series(np.log(pscore)).groupby(slate).cumsum().to_numpy())

    def per_list(values: np.ndarray) -> np.ndarray:
        return np.bincount(slate, weights=values, minlength=n)

    out: dict[str, dict[str, float]] = {}
    ips_rows = reward * in_list / pscore
    iips = SlateIndependentIPS(len_list=max(int(position.max()), 2))
    value = iips.estimate_policy_value(
        slate_id=slate,
        reward=reward,
        position=position - 1,
        pscore_item_position=pscore,
        evaluation_policy_pscore_item_position=in_list.astype(float),
    )
    out["ips"] = {"value": float(value), **_ci(per_list(ips_rows), alpha, n_bootstrap, seed)}
    eligible_per_list = np.fromiter((len(eligible[r]) for r in slate_codes), np.float64, n)
    out["snips"] = _snips(per_list(ips_rows), per_list(in_list / pscore), eligible_per_list, alpha, n_bootstrap, seed)

    out["dr"] = doubly_robust(logged, slate, slate_codes, item, reward, in_list, pscore, model_rows, eligible).estimate(
        alpha, n_bootstrap, seed
    )

    value = iips.estimate_policy_value(
        slate_id=slate,
        reward=reward,
        position=position - 1,
        pscore_item_position=pscore,
        evaluation_policy_pscore_item_position=same_place.astype(float),
    )
    out["ips_position"] = {
        "value": float(value),
        **_ci(per_list(reward * same_place / pscore), alpha, n_bootstrap, seed),
    }
    rips = SlateRewardInteractionIPS(len_list=max(int(position.max()), 2))
    value = rips.estimate_policy_value(
        slate_id=slate,
        reward=reward,
        position=position - 1,
        pscore_cascade=pscore_cascade,
        evaluation_policy_pscore_cascade=cascade.astype(float),
    )
    out["rips"] = {
        "value": float(value),
        **_ci(per_list(reward * cascade / pscore_cascade), alpha, n_bootstrap, seed),
    }
    matched = float(in_list.sum() / n)
    for name in out:
        out[name]["lists"] = float(n)
        out[name]["matched_per_list"] = matched
    return out


def _snips(
    clicks: np.ndarray, weights: np.ndarray, eligible: np.ndarray, alpha: float, n_boot: int, seed: int
) -> dict[str, float]:
    """Self-normalised IPS from per-list sums: `clicks` a (weighted clicks), `weights` b (weights), `eligible` c
    (the candidate's items that can earn a click). With A, B, C their means over lists: (A / B) * C, the click
    rate of the weighted impressions times the eligible items per list. The interval is the bootstrap of its
    delta-method linearisation per list, whose mean is the value."""
    a, b, c = float(clicks.mean()), float(weights.mean()), float(eligible.mean())
    if b == 0.0:
        return {"value": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    value = a / b * c
    linear = value + c / b * (clicks - a) - a * c / b**2 * (weights - b) + a / b * (eligible - c)
    return {"value": value, **_ci(linear, alpha, n_boot, seed)}


def _ci(per_list_values: np.ndarray, alpha: float, n_boot: int, seed: int) -> dict[str, float]:
    low, high = _interval(per_list_values, alpha, n_boot, seed)
    return {"ci_low": low, "ci_high": high}


def logged_value(logged: pd.DataFrame) -> tuple[float, float]:
    """The logging policy's own clicks per list and list CTR over `logged` impressions."""
    per_list = logged.groupby("recommendation_id")["clicked"].agg(["sum", "any"])
    if per_list.empty:
        return math.nan, math.nan
    return float(per_list["sum"].mean()), float(per_list["any"].mean())


def estimate_table(
    logged: pd.DataFrame,
    candidates: Mapping[str, Mapping[str, Sequence[str]]],
    alpha: float = 0.05,
    n_bootstrap: int = 2000,
    seed: int = 0,
    once_per_user: bool = True,
) -> pd.DataFrame:
    """`estimate` for every candidate (model name -> its lists), one row per model and estimator
    (`ESTIMATE_COLUMNS`), with the logging policy's own value on the same lists beside each; with
    `once_per_user` an item earns a click in the candidate's first list that shows it to the user only
    (`first_showings`)."""
    rows = []
    frame = list_frame(logged) if once_per_user and len(logged) else None
    first = first_logged_showings(logged) if frame is not None else None
    for model, lists in candidates.items():
        sub = logged[logged["recommendation_id"].isin(list(lists))]
        own, ctr = logged_value(sub)
        eligible = first_showings(frame, lists) if frame is not None else None
        for name, est in estimate(sub, lists, alpha, n_bootstrap, seed, eligible, first).items():
            rows.append({"model": model, "estimator": name, **est, "logged_value": own, "logged_ctr": ctr})
    return pd.DataFrame(rows, columns=list(ESTIMATE_COLUMNS))


def champion_impressions(events: pd.DataFrame, max_lists: int) -> pd.DataFrame:
    """The impressions (`contract.attribution.impressions`) of the latest `max_lists` lists the champion arm
    served, from typed event-log rows (`attribution.prepare_events`, which the caller runs once for this and
    `list_answers`)."""
    imps = attribution.impressions(events)
    imps = imps[imps["arm"] == "champion"]
    latest = imps.drop_duplicates("recommendation_id")["recommendation_id"].tail(max_lists)
    return imps[imps["recommendation_id"].isin(set(latest))].reset_index(drop=True)


def artifact_ranker(art: ServingArtifact, exclude_seen: bool) -> Ranker:
    """The candidate's top-k for a history, as the API ranks it (the history folded in, seen items left out
    when `exclude_seen`)."""

    def rank(idx: np.ndarray, weights: np.ndarray, k: int) -> np.ndarray:
        return art.scorer.topk_one(idx, weights, k, user=-1, exclude=idx if exclude_seen and len(idx) else None)

    return rank


def list_frame(imps: pd.DataFrame) -> pd.DataFrame:
    """One row per logged list: `recommendation_id`, `user_id`, `served_at` and its length `k`."""
    return (
        imps.groupby("recommendation_id", sort=False)
        .agg(user_id=("user_id", "first"), served_at=("served_at", "min"), k=("position", "size"))
        .reset_index()
    )
