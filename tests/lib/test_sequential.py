"""The canary's sequential test on simulated traffic whose truth is known: seeded runs of two arms with given
list CTRs, checked after every batch of 100 lists per arm, each run stopped at its first verdict.
`pytest tests/lib/test_sequential.py -q -s` prints the measured rates."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.stats import norm

from recsys_assets.lib.list_tally import design_effect
from recsys_assets.lib.sequential import (
    DEFAULT_TAU,
    SequentialTest,
    mixture_half_width,
    mixture_log_likelihood_ratio,
)

CTR = 0.08
BATCH, MAX_LISTS, RUNS = 100, 20_000, 400
ALPHA = 0.05


def cumulative_clicks(ctr: float, seed: int, batch: int = BATCH) -> np.ndarray:
    """Clicked lists of one arm, cumulative after each batch: (RUNS, looks)."""
    rng = np.random.default_rng(seed)
    return rng.binomial(batch, ctr, size=(RUNS, MAX_LISTS // BATCH)).cumsum(axis=1)


def simulate(
    champion_ctr: float, challenger_ctr: float, seed: int, champion_per_challenger: int = 1, **kw: float
) -> tuple[np.ndarray, np.ndarray]:
    """Each run's verdict and the lists of the smaller arm (the challenger's) it was reached at. The
    champion serves `champion_per_challenger` lists for each of the challenger's."""
    k = champion_per_challenger
    champion = cumulative_clicks(champion_ctr, seed, k * BATCH)
    challenger = cumulative_clicks(challenger_ctr, seed + 10_000)
    lists = BATCH * np.arange(1, champion.shape[1] + 1)
    verdicts, at = [], []
    for run in range(RUNS):
        test = SequentialTest(alpha=ALPHA, max_lists=MAX_LISTS, **kw)  # type: ignore[arg-type]
        for j, n in enumerate(lists.tolist()):
            decision = test.update(k * n, int(champion[run, j]), n, int(challenger[run, j]))
            if decision.verdict != "continue":
                break
        verdicts.append(decision.verdict)
        at.append(decision.lists)
    return np.array(verdicts), np.array(at)


def share(verdicts: np.ndarray, verdict: str) -> float:
    return float(np.mean(verdicts == verdict))


def test_equal_arms_are_rarely_withdrawn() -> None:
    verdicts, at = simulate(CTR, CTR, seed=1)
    withdrawn, promoted = share(verdicts, "withdraw"), share(verdicts, "promote")
    print(
        f"\nA/A at {CTR:.0%}: withdraw {withdrawn:.2%}, promote {promoted:.2%} "
        f"(median {np.median(at[verdicts == 'promote']):.0f} lists), inconclusive {share(verdicts, 'inconclusive'):.2%}"
    )
    # withdrawing an equal challenger is the error the test bounds, over all 200 looks together
    assert withdrawn < ALPHA, f"false-withdraw rate {withdrawn:.2%} over {RUNS} runs"
    assert share(verdicts, "continue") == 0.0


def test_a_challenger_worse_by_the_margin_is_rarely_promoted() -> None:
    """The false promotion the gate bounds: a challenger exactly `margin` worse than the champion (the edge of
    "not worse") promoted over any of the 200 looks, in under alpha of the runs."""
    margin = 0.05
    verdicts, _ = simulate(CTR, CTR * (1 - margin), seed=5, margin=margin)
    promoted = share(verdicts, "promote")
    print(f"\nchallenger {margin:.0%} worse (the margin): promoted {promoted:.2%} of {RUNS} runs")
    assert promoted < ALPHA, f"false-promotion rate {promoted:.2%} over {RUNS} runs"


def test_equal_arms_rarely_shown_different_whichever_way() -> None:
    # with no margin, promote means "shown better" and withdraw "shown worse": both wrong on A/A traffic,
    # so their sum is how often the confidence sequence ever left out the true difference 0
    verdicts, _ = simulate(CTR, CTR, seed=2, margin=0.0)
    wrong = share(verdicts, "promote") + share(verdicts, "withdraw")
    print(f"\nA/A, no margin: ever shown different {wrong:.2%}")
    assert wrong < ALPHA, f"the interval left out 0 in {wrong:.2%} of {RUNS} runs"


def test_peeking_at_a_fixed_sample_z_test_would_not_hold_alpha() -> None:
    # the same looks with a plain two-proportion z test: the error that the mixture test exists to avoid,
    # and a check that the simulation above is sensitive enough to see it
    champion, challenger = cumulative_clicks(CTR, 3), cumulative_clicks(CTR, 10_003)
    n = BATCH * np.arange(1, champion.shape[1] + 1)
    pooled = (champion + challenger) / (2 * n)
    z = (challenger - champion) / n / np.sqrt(np.maximum(pooled * (1 - pooled), 1e-12) * 2 / n)
    ever = float(np.mean((np.abs(z) > norm.ppf(1 - ALPHA / 2)).any(axis=1)))
    print(f"\nA/A, z test at every look: ever significant {ever:.2%}")
    assert ever > 2 * ALPHA


def test_a_challenger_20_percent_worse_is_withdrawn_within_a_few_thousand_lists() -> None:
    verdicts, at = simulate(CTR, 0.8 * CTR, seed=4)
    withdrawn = share(verdicts, "withdraw")
    median = float(np.median(at[verdicts == "withdraw"]))
    message = (
        f"withdrawn in {withdrawn:.2%} of runs, median {median:.0f} lists per arm (90th {np.quantile(at, 0.9):.0f})"
    )
    print(f"\n20% worse: {message}")
    assert withdrawn >= 0.99, message
    assert median <= 5_000, message


def test_a_challenger_10_percent_better_is_promoted_in_most_runs() -> None:
    verdicts, at = simulate(CTR, 1.1 * CTR, seed=5)
    promoted = share(verdicts, "promote")
    message = f"promoted in {promoted:.2%} of runs, median {np.median(at[verdicts == 'promote']):.0f} lists per arm"
    print(f"\n10% better: {message}")
    assert promoted >= 0.9, message
    assert share(verdicts, "withdraw") == 0.0, message


def test_a_canary_on_a_tenth_of_the_traffic() -> None:
    # the champion serves 9 lists for each of the challenger's: unequal arms, the canary's case
    same, _ = simulate(CTR, CTR, seed=6, champion_per_challenger=9)
    worse, at = simulate(CTR, 0.8 * CTR, seed=7, champion_per_challenger=9)
    median = float(np.median(at[worse == "withdraw"]))
    message = (
        f"A/A withdraw {share(same, 'withdraw'):.2%}; 20% worse withdrawn in {share(worse, 'withdraw'):.2%} of runs, "
        f"median {median:.0f} challenger lists"
    )
    print(f"\n10% canary: {message}")
    assert share(same, "withdraw") < ALPHA, message
    assert share(worse, "withdraw") >= 0.99, message
    assert median <= 3_000, message


def test_the_interval_is_where_the_mixture_ratio_reaches_one_over_alpha() -> None:
    variance, diff = 2.5e-5, -0.004
    half = mixture_half_width(variance, ALPHA, DEFAULT_TAU)

    def excess(theta0: float) -> float:
        return mixture_log_likelihood_ratio(diff, variance, DEFAULT_TAU, theta0) - math.log(1 / ALPHA)

    upper = brentq(excess, diff, diff + 1.0)
    assert upper - diff == pytest.approx(half, rel=1e-9)
    assert excess(diff) < 0 < excess(diff - 1.01 * half)


def test_a_decided_test_stays_decided_and_says_why() -> None:
    test = SequentialTest(min_lists=100, max_lists=1_000)
    first = test.update(1_000, 80, 1_000, 20)
    assert first.verdict == "withdraw"
    assert first.high < 0 < first.champion_ctr
    assert first.reason.startswith("withdraw: worse") and "1,000 lists per arm" in first.reason
    assert first.p_value < ALPHA
    assert test.update(2_000, 160, 2_000, 200) is first
    undecided = SequentialTest(min_lists=100, max_lists=1_000).update(1_000, 80, 1_000, 78)
    assert undecided.verdict == "inconclusive"
    assert undecided.low < -0.05 * 0.08 and undecided.high > 0


@pytest.mark.parametrize(
    ("counts", "bad"),
    [
        ((-1, 0, 10, 1), "-1"),
        ((10, -2, 10, 1), "-2"),
        ((10, 11, 10, 1), "11"),
        ((10, 1, 10, 12), "12"),
    ],
)
def test_bad_counts_are_refused(counts: tuple[int, int, int, int], bad: str) -> None:
    with pytest.raises(ValueError, match=bad):
        SequentialTest().update(*counts)


def test_counts_must_be_cumulative() -> None:
    test = SequentialTest()
    test.update(100, 8, 100, 9)
    with pytest.raises(ValueError, match="cannot go down"):
        test.update(100, 8, 90, 9)


@pytest.mark.parametrize(("kwargs", "bad"), [({"alpha": 0.0}, "0.0"), ({"alpha": 1.5}, "1.5"), ({"tau": -0.1}, "-0.1")])
def test_bad_settings_are_refused(kwargs: dict[str, float], bad: str) -> None:
    with pytest.raises(ValueError, match=bad):
        SequentialTest(**kwargs)  # type: ignore[arg-type]


def clustered_arm(seed: int, kappa: float, ctr_scale: float = 1.0, users: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """One arm's cumulative lists and clicked lists per user after each batch, (RUNS, looks, users): users of
    unequal activity (Zipf-like) and unequal CTR (Beta of mean `CTR` x `ctr_scale` and concentration `kappa`:
    intra-user correlation 1 / (kappa + 1)), so that one user's lists are correlated."""
    rng = np.random.default_rng(seed)
    looks = MAX_LISTS // BATCH
    activity = 1.0 / np.arange(1, users + 1) ** 0.7
    activity /= activity.sum()
    ctr = ctr_scale * rng.beta(kappa * CTR, kappa * (1 - CTR), size=(RUNS, 1, users))
    lists = rng.multinomial(BATCH, activity, size=(RUNS, looks))
    return lists.cumsum(axis=1), rng.binomial(lists, ctr).cumsum(axis=1)


def clustered_runs(
    kappa: float, ctr_scale: float, margin: float, with_design_effect: bool, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """`simulate` on clustered arms (`clustered_arm`, the challenger's CTR scaled by `ctr_scale`), the test fed
    each arm's design effect from its per-user counts at each look, or not."""
    (la, ca), (lb, cb) = clustered_arm(seed, kappa), clustered_arm(seed + 1, kappa, ctr_scale)
    verdicts, at = [], []
    for run in range(RUNS):
        test = SequentialTest(alpha=ALPHA, margin=margin, max_lists=MAX_LISTS)
        for j in range(MAX_LISTS // BATCH):
            a, b = (la[run, j], ca[run, j]), (lb[run, j], cb[run, j])
            deff = (design_effect(*a), design_effect(*b)) if with_design_effect else (1.0, 1.0)
            n = BATCH * (j + 1)
            decision = test.update(n, int(a[1].sum()), n, int(b[1].sum()), *deff)
            if decision.verdict != "continue":
                break
        verdicts.append(decision.verdict)
        at.append(decision.lists)
    return np.array(verdicts), np.array(at)


@pytest.mark.parametrize(("kappa", "label"), [(30.0, "heavy"), (200.0, "replay-like")])
def test_clustered_users_need_the_design_effect_to_hold_alpha(kappa: float, label: str) -> None:
    """A/A traffic where each arm is 300 users of unequal activity with correlated lists (20,000 lists per arm by
    the end; design effect about 7 when heavy, about 2 replay-like). Treating the lists as independent, the
    interval leaves out 0 more often than alpha; with each arm's design effect (`list_tally.design_effect`, from
    the per-user counts at each look) it holds."""
    rates = {}
    for with_deff in (False, True):
        verdicts, _ = clustered_runs(kappa, 1.0, 0.0, with_deff, seed=21)
        rates[with_deff] = share(verdicts, "promote") + share(verdicts, "withdraw")
    print(
        f"\nclustered ({label}) A/A, margin 0: ever shown different {rates[False]:.2%} as independent lists, "
        f"{rates[True]:.2%} with the design effect"
    )
    assert rates[True] < ALPHA < rates[False] * (1.0 if kappa > 100 else 0.5)


def test_clustered_a_challenger_at_the_margin_is_rarely_promoted() -> None:
    verdicts, _ = clustered_runs(30.0, 0.95, 0.05, True, seed=23)
    promoted = share(verdicts, "promote")
    print(f"\nclustered (heavy), challenger 5% worse (the margin): promoted {promoted:.2%} with the design effect")
    assert promoted < ALPHA


def test_clustered_replay_like_a_20_percent_worse_challenger_is_still_withdrawn() -> None:
    for with_deff in (False, True):
        verdicts, at = clustered_runs(200.0, 0.8, 0.05, with_deff, seed=25)
        withdrawn = verdicts == "withdraw"
        print(
            f"\nclustered (replay-like), 20% worse, design effect {with_deff}: withdrawn {withdrawn.mean():.2%}, "
            f"median {np.median(at[withdrawn]):.0f} lists per arm"
        )
    assert withdrawn.mean() > 0.85
