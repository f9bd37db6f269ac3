"""Off-policy estimates on a synthetic log whose answer is known: a logging policy that explores its last
slot, clicks drawn from known per-item probabilities, and a target list whose true clicks per list follow."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recsys_assets.contract.exploration import sample_slot
from recsys_assets.lib import off_policy

K, DEPTH, SHARE = 5, 15, 0.5
N_ITEMS = 40


def synthetic_log(n_lists: int, seed: int) -> tuple[pd.DataFrame, dict[str, list[str]], float]:
    """Impressions of `n_lists` lists for two user groups, the target's list per logged list, and the
    target's true clicks per list."""
    rng = np.random.default_rng(seed)
    prob = np.random.default_rng(99).uniform(0.0, 0.25, size=(2, N_ITEMS))
    # each group's ranking puts its likeliest items first, with a few swaps
    rankings = [np.argsort(-prob[g] + np.random.default_rng(g).normal(0, 0.03, N_ITEMS)) for g in (0, 1)]
    # the target keeps two of the logging ranking's top items and takes three from deeper ranks
    target_ranks = [0, 2, 6, 9, 12]
    rows, target = [], {}
    groups = rng.integers(0, 2, n_lists)
    for t, g in enumerate(groups.tolist()):
        rec = f"r{t}"
        ranks, propensity = sample_slot(K, N_ITEMS, SHARE, DEPTH, rng)
        items = rankings[g][ranks]
        clicks = rng.random(K) < prob[g][items]
        rows += [
            (rec, pos, str(it), float(p), bool(c))
            for pos, (it, p, c) in enumerate(zip(items.tolist(), propensity.tolist(), clicks.tolist(), strict=True), 1)
        ]
        target[rec] = [str(j) for j in rankings[g][target_ranks].tolist()]
    true_value = float(np.mean([prob[g][rankings[g][target_ranks]].sum() for g in (0, 1)]))
    # groups are drawn with equal chance, so the truth is the mean over the two groups
    log = pd.DataFrame(rows, columns=["recommendation_id", "position", "item_id", "propensity", "clicked"])
    return log, target, true_value


def test_estimates_cover_the_true_value_of_the_target_list() -> None:
    hits = {"ips": 0, "snips": 0, "dr": 0}
    errors: dict[str, list[float]] = {"ips": [], "snips": [], "dr": []}
    runs = 20
    for seed in range(runs):
        log, target, truth = synthetic_log(3000, seed)
        est = off_policy.estimate(log, target, alpha=0.05, n_bootstrap=300, seed=seed)
        for name in hits:
            hits[name] += est[name]["ci_low"] <= truth <= est[name]["ci_high"]
            errors[name].append(est[name]["value"] - truth)
    for name in hits:
        # 95% intervals: at least 16 of 20 cover the truth (P(fewer) < 2% if they are right)
        assert hits[name] >= 16, (name, hits[name])
        # and the mean error over 20 runs is within 3 standard errors of zero: no bias
        err = np.asarray(errors[name])
        assert abs(err.mean()) <= 3 * err.std(ddof=1) / np.sqrt(runs), (name, err.mean())


def test_unweighted_clicks_would_be_biased_and_the_logging_policy_is_judged_exactly() -> None:
    log, target, truth = synthetic_log(4000, 1)
    est = off_policy.estimate(log, target, n_bootstrap=300)
    # counting the target's items' clicks without weights undercounts the items of the explored slot
    naive = log[[it in set(target[r]) for r, it in zip(log["recommendation_id"], log["item_id"], strict=True)]]
    naive_value = naive["clicked"].sum() / log["recommendation_id"].nunique()
    assert naive_value < est["ips"]["ci_low"] and est["ips"]["ci_low"] <= truth <= est["ips"]["ci_high"]
    # the logged lists themselves, as the target: every estimator gives the logged clicks per list
    own = {r: g.sort_values("position")["item_id"].tolist() for r, g in log.groupby("recommendation_id")}
    deterministic = log.assign(propensity=1.0)
    logged = log.groupby("recommendation_id")["clicked"].sum().mean()
    est = off_policy.estimate(deterministic, own, n_bootstrap=300)
    for name in off_policy.ESTIMATORS:
        assert est[name]["value"] == pytest.approx(logged), name


def _weights(log: pd.DataFrame, eligible: dict[str, set[str]]) -> np.ndarray:
    rows = zip(log["recommendation_id"], log["item_id"], strict=True)
    return np.fromiter((it in eligible[r] for r, it in rows), bool, len(log)) / log["propensity"].to_numpy()


def test_snips_normalises_by_the_items_that_can_earn_a_click() -> None:
    """Under the once-per-user rule most of a candidate's lists hold no item, or one, that can earn a click. The
    weights of a list add up to its eligible items on average, not to one per list or one per position."""
    keep = 0.06  # each of the target's five items stays eligible in a list with this chance: 0.3 per list
    covered = 0
    for seed in range(10):
        log, target, full = synthetic_log(4000, seed)
        rng = np.random.default_rng(100 + seed)
        eligible = {r: {it for it in items if rng.random() < keep} for r, items in target.items()}
        truth = keep * full
        est = off_policy.estimate(log, target, n_bootstrap=300, seed=seed, eligible=eligible)["snips"]
        covered += est["ci_low"] <= truth <= est["ci_high"]
        w = _weights(log, eligible)
        wr = w * log["clicked"].to_numpy()
        # the weights normalised to one per list: the click rate of an eligible item, about 1 / 0.3 times the truth
        per_list = wr.sum() / w.sum()
        # normalised to one per position (obp's SelfNormalizedSlateIndependentIPS), positions with no weight left
        # out (obp's would give 0 / 0 there): every position counted as holding an eligible item
        at = [log["position"].to_numpy() == p for p in range(1, K + 1)]
        per_position = sum(wr[m].sum() / w[m].mean() for m in at if w[m].any()) / log["recommendation_id"].nunique()
        assert est["ci_high"] < per_list < per_position, (seed, est, per_list, per_position, truth)
    assert covered >= 8, covered


def _heavy_tailed_log(n_lists: int, seed: int) -> tuple[pd.DataFrame, dict[str, list[str]], float]:
    """Each list: an item the target does not hold at position 1, then the target's two items, each logged with its
    own propensity (log-uniform on 0.01-1: weights up to 100) and clicked with a chance uniform on 0.5-0.9 if shown.
    """
    rng = np.random.default_rng(seed)
    rows, target = [], {}
    for t in range(n_lists):
        rec = f"r{t}"
        rows.append((rec, 1, "other", 1.0, bool(rng.random() < 0.1)))
        target[rec] = [f"i{t}-0", f"i{t}-1"]
        propensity = np.exp(rng.uniform(np.log(0.01), 0.0, 2))
        click = rng.uniform(0.5, 0.9, 2)
        for pos, (it, p, q) in enumerate(zip(target[rec], propensity.tolist(), click.tolist(), strict=True), 2):
            if rng.random() < p:
                rows.append((rec, pos, it, p, bool(rng.random() < q)))
    log = pd.DataFrame(rows, columns=["recommendation_id", "position", "item_id", "propensity", "clicked"])
    return log, target, 2 * 0.7


def test_snips_is_narrower_than_ips_under_heavy_tailed_weights() -> None:
    hits = {"ips": 0, "snips": 0}
    runs = 20
    for seed in range(runs):
        log, target, truth = _heavy_tailed_log(2000, seed)
        est = off_policy.estimate(log, target, n_bootstrap=300, seed=seed)
        for name in hits:
            hits[name] += est[name]["ci_low"] <= truth <= est[name]["ci_high"]
        # a list's weighted clicks rise with its weights: dividing by them takes most of the weights' spread out
        width = {name: est[name]["ci_high"] - est[name]["ci_low"] for name in hits}
        assert width["snips"] < 0.8 * width["ips"], (seed, width)
    assert min(hits.values()) >= 16, hits


def test_snips_without_any_weight_is_nan() -> None:
    log, target, _ = synthetic_log(50, 0)
    elsewhere = {r: ["not-logged"] for r in target}
    est = off_policy.estimate(log, elsewhere, n_bootstrap=100)
    assert np.isnan([est["snips"][k] for k in ("value", "ci_low", "ci_high")]).all()
    assert est["ips"]["value"] == 0.0


def test_candidate_lists_use_only_the_history_before_each_list() -> None:
    history = pd.DataFrame(
        {
            "user_id": ["u", "u", "u"],
            "item_id": ["a", "b", "c"],
            "timestamp": pd.to_datetime(["2026-01-01", "2026-01-02", "2026-01-03"], utc=True),
            "weight": [1.0, 1.0, 1.0],
        }
    )
    lists = pd.DataFrame(
        {
            "recommendation_id": ["r1", "r2"],
            "user_id": ["u", "u"],
            "served_at": pd.to_datetime(["2026-01-02 12:00", "2026-01-05 00:00"], utc=True),
            "k": [2, 2],
        }
    )
    seen: dict[int, list[int]] = {}

    def rank(idx: np.ndarray, weights: np.ndarray, k: int) -> np.ndarray:
        seen[len(seen)] = idx.tolist()
        return np.asarray([3, 4][:k])

    out = off_policy.candidate_lists(rank, ["a", "b", "c", "x", "y"], lists, history)
    assert seen == {0: [0, 1], 1: [0, 1, 2]}
    assert out == {"r1": ["x", "y"], "r2": ["x", "y"]}


def test_candidate_lists_leave_out_what_the_logged_lists_brought_until_the_candidate_shows_it() -> None:
    # u rated a before any list; the logging policy's list r0 brought a click on b and a rating of b after it
    history = pd.DataFrame(
        {
            "user_id": "u",
            "item_id": ["a", "b", "b"],
            "timestamp": pd.to_datetime(["2026-01-01 00:00", "2026-01-02 00:01", "2026-01-02 00:02"], utc=True),
            "weight": [1.0, 1.0, 5.0],
        }
    )
    answers = history.iloc[1:][["user_id", "item_id", "timestamp"]]
    lists = pd.DataFrame(
        {
            "recommendation_id": ["r0", "r1", "r2", "r3"],
            "user_id": "u",
            "served_at": pd.to_datetime(["2026-01-02", "2026-01-03", "2026-01-04", "2026-01-05"], utc=True),
            "k": 1,
        }
    )
    items = ["a", "b", "c", "d"]

    def ranked(shows: list[str]) -> tuple[dict[str, list[str]], list[tuple[list[int], list[float]]]]:
        seen: list[tuple[list[int], list[float]]] = []

        def rank(idx: np.ndarray, weights: np.ndarray, k: int) -> np.ndarray:
            seen.append((idx.tolist(), weights.tolist()))
            return np.asarray([items.index(shows[len(seen) - 1])])

        return off_policy.candidate_lists(rank, items, lists, history, answers), seen

    # a candidate that never shows b ranks without it: the click was the logging policy's doing
    out, seen = ranked(["c", "d", "c", "d"])
    assert [s[0] for s in seen] == [[0], [0], [0], [0]]
    assert out == {"r0": ["c"], "r1": ["d"], "r2": ["c"], "r3": ["d"]}
    # one that shows b (at r1, after the logged click) has it, and its rating, from its next list on
    _, seen = ranked(["c", "b", "c", "d"])
    assert seen[2] == ([0, 1], [1.0, 6.0])
    assert [s[0] for s in seen] == [[0], [0], [0, 1], [0, 1]]
    # one that showed b in the very list that brought the click has it at once
    _, seen = ranked(["b", "c", "c", "d"])
    assert [s[0] for s in seen] == [[0], [0, 1], [0, 1], [0, 1]]
    # without `answers`, the logged history as it is
    seen_all: list[list[int]] = []
    off_policy.candidate_lists(lambda i, w, k: seen_all.append(i.tolist()) or np.asarray([2]), items, lists, history)
    assert seen_all == [[0], [0, 1], [0, 1], [0, 1]]


def test_list_answers_are_the_feedback_events_naming_a_list() -> None:
    events = pd.DataFrame(
        {
            "user_id": ["u", "u", "u", "u"],
            "item_id": ["a", "a", "b", "c"],
            "event_type": ["impression", "click", "purchase", "click"],
            "timestamp": pd.to_datetime(["2026-01-01"] * 4, utc=True),
            "recommendation_id": ["r", "r", "r", None],
        }
    )
    assert off_policy.list_answers(events)["item_id"].tolist() == ["a", "b"]


def test_an_item_earns_a_click_once_per_user() -> None:
    lists = pd.DataFrame(
        {
            "recommendation_id": ["r2", "r1", "r3"],
            "user_id": ["u", "u", "v"],
            "served_at": pd.to_datetime(["2026-01-02", "2026-01-01", "2026-01-03"], utc=True),
        }
    )
    candidate = {"r1": ["a", "b"], "r2": ["b", "c"], "r3": ["a", "b"]}
    assert off_policy.first_showings(lists, candidate) == {"r1": {"a", "b"}, "r2": {"c"}, "r3": {"a", "b"}}
    # a click on b in the second list does not count: b had its chance in the first
    log = pd.DataFrame(
        {
            "recommendation_id": ["r1", "r1", "r2", "r2"],
            "user_id": "u",
            "served_at": pd.to_datetime(["2026-01-01"] * 2 + ["2026-01-02"] * 2, utc=True),
            "position": [1, 2, 1, 2],
            "item_id": ["a", "b", "b", "c"],
            "propensity": 1.0,
            "clicked": [False, False, True, False],
        }
    )
    once = off_policy.estimate_table(log, {"m": candidate}, n_bootstrap=100)
    every = off_policy.estimate_table(log, {"m": candidate}, n_bootstrap=100, once_per_user=False)
    assert once.set_index("estimator").loc["ips", "value"] == 0.0
    assert every.set_index("estimator").loc["ips", "value"] == 0.5


def test_doubly_robust_learns_its_reward_model_from_first_showings() -> None:
    """Two groups of users, each shown its own five items in every one of its five lists (propensity 1); a user
    clicks an item at its first showing with the item's probability, never later. The candidate shows each
    group three of its own items and two of the other group's, which its log never shows: IPS has nothing for
    those two, and a reward model over every impression sees each click diluted by four passed-over repeats."""
    rng = np.random.default_rng(7)
    prob = {f"i{j}": p for j, p in enumerate([0.4, 0.3, 0.25, 0.2, 0.15, 0.35, 0.3, 0.25, 0.2, 0.1])}
    shown = {"A": [f"i{j}" for j in range(5)], "B": [f"i{j}" for j in range(5, 10)]}
    target = {"A": ["i0", "i1", "i2", "i5", "i6"], "B": ["i5", "i6", "i7", "i0", "i1"]}
    rows, candidate = [], {}
    for g in ("A", "B"):
        for u in range(400):
            user = f"{g}{u}"
            first = {it: rng.random() < prob[it] for it in shown[g]}
            for visit in range(5):
                rec = f"{user}-{visit}"
                at = pd.Timestamp("2026-01-01", tz="UTC") + pd.Timedelta(hours=visit)
                rows += [(rec, user, at, pos, it, 1.0, visit == 0 and first[it]) for pos, it in enumerate(shown[g], 1)]
                candidate[rec] = target[g]
    columns = ["recommendation_id", "user_id", "served_at", "position", "item_id", "propensity", "clicked"]
    log = pd.DataFrame(rows, columns=columns)
    # the candidate's clicks per list: each item once per user, at the first of a user's five lists
    truth = float(np.mean([sum(prob[it] for it in target[g]) / 5 for g in ("A", "B")]))
    est = off_policy.estimate_table(log, {"m": candidate}, n_bootstrap=300).set_index("estimator")
    assert est.loc["dr", "ci_low"] <= truth <= est.loc["dr", "ci_high"], (est.loc["dr"], truth)
    assert est.loc["ips", "ci_high"] < truth  # the other group's items earn nothing under IPS
    # the reward model over every impression instead of first showings
    eligible = off_policy.first_showings(off_policy.list_frame(log), candidate)
    diluted = off_policy.estimate(log, candidate, n_bootstrap=300, eligible=eligible, first_shown=None)
    assert diluted["dr"]["ci_high"] < truth


def clustered_log(n_users: int, lists_per_user: int, seed: int) -> tuple[pd.DataFrame, dict[str, list[str]], float]:
    """`synthetic_log`'s two groups and target, with users who differ widely in how much they click (a
    Gamma(1, 1) factor on every click probability) and many lists each: one user's lists are correlated. The
    truth is over the population of users, not the ones drawn."""
    rng = np.random.default_rng(seed)
    prob = np.random.default_rng(99).uniform(0.0, 0.25, size=(2, N_ITEMS))
    rankings = [np.argsort(-prob[g] + np.random.default_rng(g).normal(0, 0.03, N_ITEMS)) for g in (0, 1)]
    target_ranks = [0, 2, 6, 9, 12]
    factor, group = rng.gamma(1.0, 1.0, n_users), rng.integers(0, 2, n_users)
    rows, target = [], {}
    for u in range(n_users):
        g = group[u]
        for v in range(lists_per_user):
            rec = f"u{u}-{v}"
            ranks, propensity = sample_slot(K, N_ITEMS, SHARE, DEPTH, rng)
            items = rankings[g][ranks]
            clicks = rng.random(K) < np.minimum(prob[g][items] * factor[u], 1.0)
            rows += [
                (rec, f"u{u}", pos, str(it), float(p), bool(c))
                for pos, (it, p, c) in enumerate(
                    zip(items.tolist(), propensity.tolist(), clicks.tolist(), strict=True), 1
                )
            ]
            target[rec] = [str(j) for j in rankings[g][target_ranks].tolist()]
    population = np.random.default_rng(1234).gamma(1.0, 1.0, 200_000)
    truth = float(
        np.mean(
            [
                np.minimum(prob[g][rankings[g][target_ranks]][:, None] * population, 1.0).mean(axis=1).sum()
                for g in (0, 1)
            ]
        )
    )
    columns = ["recommendation_id", "user_id", "position", "item_id", "propensity", "clicked"]
    return pd.DataFrame(rows, columns=columns), target, truth


def test_the_doubly_robust_interval_resamples_users_and_covers_the_population() -> None:
    hits, widths, by_list = 0, [], []
    for seed in range(20):
        log, target, truth = clustered_log(60, 40, seed)
        dr = off_policy.estimate(log, target, n_bootstrap=200, seed=seed)["dr"]
        hits += dr["ci_low"] <= truth <= dr["ci_high"]
        widths.append(dr["ci_high"] - dr["ci_low"])
        # without users, lists are what is resampled: a user's correlated lists counted as independent
        lists = off_policy.estimate(log.drop(columns=["user_id"]), target, n_bootstrap=200, seed=seed)["dr"]
        by_list.append(lists["ci_high"] - lists["ci_low"])
    assert hits >= 16, hits
    assert np.mean(widths) >= 1.5 * np.mean(by_list), (np.mean(widths), np.mean(by_list))
