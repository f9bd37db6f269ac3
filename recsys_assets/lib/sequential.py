"""An always-valid sequential test of a challenger's list CTR against the champion's, for a canary promotion.

Public: `SequentialTest` (`update(...) -> Decision`, `snapshot`/`resume`), `Decision`, `mixture_log_likelihood_ratio`,
`mixture_half_width`.

The test is the mixture sequential probability ratio test (mSPRT) of Johari, Koomen, Pekelis and Walsh,
"Peeking at A/B Tests: Why it matters, and what to do about it", KDD 2017, and "Always Valid Inference:
Continuous Monitoring of A/B Tests", Operations Research 70(3), 2022. Its p-values and confidence
sequences stay valid however often they are looked at, so the counts can be checked after every batch of
lists and the canary stopped at the first look that decides.

The data of an arm are its lists and the lists with at least one click (a Bernoulli outcome per list;
counting every click of a list would understate the variance). The statistic is the difference of the
two list CTRs, challenger minus champion, taken as normal with variance V = p_a(1-p_a)/n_a + p_b(1-p_b)/n_b:
the two-sample Bernoulli case of the papers, with the variance plugged in from the data (each rate
shrunk by half a click, so an arm with no click yet does not get zero variance), and with unequal arms
allowed. The arms are split by user, and one user's lists are not independent (a user who clicks, clicks
again): each arm's Bernoulli variance is multiplied by its design effect (`update`'s `champion_deff`,
`challenger_deff`: the delta-method variance over users against the Bernoulli one, `lib/list_tally.py`),
taken as at least 1; on the ml-100k replay the champion arm's is about 2. Mixing the likelihood ratio over a
normal prior N(theta0, tau^2) on the difference gives, at a hypothesised difference theta0,

    Lambda(theta0) = sqrt(V / (V + tau^2)) * exp(tau^2 (d - theta0)^2 / (2 V (V + tau^2)))

a martingale under theta0, so by Ville's inequality it ever reaches 1/alpha with probability at most
alpha. The always-valid p-value is the running minimum of 1/Lambda(0); the confidence sequence is every
theta0 with Lambda(theta0) < 1/alpha, the interval d +- `mixture_half_width(V, alpha, tau)`, intersected
with the intervals of the earlier looks. The guarantee is asymptotic (the normal approximation of a
difference of rates), which is why no verdict is given before `min_lists` lists per arm.

The question is non-inferiority: is the challenger worse than the champion by more than `margin` of
the champion's CTR? With m = margin * champion CTR (its estimate at the look):

* `withdraw` when the interval's upper bound is below 0: the challenger is worse (which covers an upper
  bound below -m). Checked first: at a look where both bounds decide, the challenger is withdrawn;
* `promote` when the lower bound is above -m: it is not worse by more than the margin;
* `continue` otherwise;
* `inconclusive` when the smaller arm has reached `max_lists` without either: the champion stays, and the
  challenger is not recorded as worse. Showing non-inferiority is slow: the interval of two arms at 8% CTR
  is +-0.39 points, narrower than a 5% margin (0.40 points), only at 100,000 lists per arm, while a
  challenger 20% worse is withdrawn after a median of 4,400 (docs/benchmarks.md).

A decided test (promote, withdraw, inconclusive) stays decided: later updates return the same decision.

No library is used; none on PyPI fits and is maintained. `msprt` (one release, 2023) documents the
statistic and the mixing variance but no confidence sequence or margin, and needs matplotlib; `confseq`
(last release 2023) builds C++ against Boost and calls itself early-stage; `savvi` (an 8 kB package,
last release 2024) and `ville` (a first release, 0.1.0, 2026-10) are young projects to lean a promotion
on; spotify-confidence's sequential tests are group-sequential (alpha spent over a planned number of
looks), not mixture tests. The mSPRT for a difference of rates is the closed form
above, a few lines on the standard library's `math`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

Verdict = Literal["promote", "withdraw", "continue", "inconclusive"]

# The mixing standard deviation, in CTR points (absolute difference of rates). The mixture's interval is
# narrowest near the number of lists where V is a few times smaller than tau^2; 0.01 puts that at a few
# thousand lists per arm for CTRs near 8%, where a 20% worse challenger (a difference of 0.016) should be
# caught: in simulation (docs/benchmarks.md) its median lists to withdraw one is 4,300 per arm, against
# 6,100 with tau = 0.005 and 4,050 with 0.02 (whose A/A runs withdrew a little more often, 1.5% vs 1.25%).
DEFAULT_TAU = 0.01


def mixture_log_likelihood_ratio(diff: float, variance: float, tau: float, theta0: float = 0.0) -> float:
    """log Lambda(theta0): the normal-mixture likelihood ratio of a difference `diff` with `variance`,
    mixing N(theta0, tau^2) over the alternative (Johari et al. 2022, eq. 11 in the two-sample form)."""
    total = variance + tau * tau
    return 0.5 * math.log(variance / total) + tau * tau * (diff - theta0) ** 2 / (2.0 * variance * total)


def mixture_half_width(variance: float, alpha: float, tau: float) -> float:
    """Half the width of the (1 - alpha) confidence sequence at a look: the theta0 with
    Lambda(theta0) < 1/alpha lie within this distance of the observed difference."""
    total = variance + tau * tau
    return math.sqrt(2.0 * variance * total / (tau * tau) * (math.log(1.0 / alpha) + 0.5 * math.log(total / variance)))


@dataclass(frozen=True)
class Decision:
    """One look at the counts: the verdict, the difference of CTRs (challenger - champion) and its
    always-valid interval, the lists seen, and a one-line reason for a log or a console."""

    verdict: Verdict
    estimate: float
    low: float
    high: float
    champion_ctr: float
    challenger_ctr: float
    champion_lists: int
    challenger_lists: int
    p_value: float  # always-valid, for "the two CTRs are equal"
    reason: str

    @property
    def lists(self) -> int:
        """Lists of the smaller arm, the one `max_lists` is counted on."""
        return min(self.champion_lists, self.challenger_lists)


def _check_counts(name: str, lists: int, clicks: int) -> None:
    if lists < 0:
        raise ValueError(f"{name}_lists must be >= 0, got {lists}")
    if clicks < 0:
        raise ValueError(f"{name}_clicks must be >= 0, got {clicks}")
    if clicks > lists:
        raise ValueError(f"{name}_clicks ({clicks}) must not exceed {name}_lists ({lists}): count lists with a click")


def _pts(x: float) -> str:
    return f"{100 * x:+.2f} pts"


@dataclass
class SequentialTest:
    """The canary's test, fed cumulative counts after each batch of lists (`update`).

    alpha: the chance allowed, over every look together, that the interval ever leaves out the true
    difference (both sides together; a wrong `withdraw` is one side of it). margin: how much worse,
    relative to the champion's CTR, still counts as not worse. tau: the mixing standard deviation
    (`DEFAULT_TAU`). max_lists: lists of the smaller arm after which an undecided test stops as
    `inconclusive`. min_lists: lists of each arm before any verdict."""

    alpha: float = 0.05
    margin: float = 0.05
    tau: float = DEFAULT_TAU
    max_lists: int = 50_000
    min_lists: int = 500
    _low: float = field(default=-math.inf, init=False, repr=False)
    _high: float = field(default=math.inf, init=False, repr=False)
    _p_value: float = field(default=1.0, init=False, repr=False)
    _seen: tuple[int, int, int, int] = field(default=(0, 0, 0, 0), init=False, repr=False)
    _final: Decision | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if not 0.0 <= self.margin < 1.0:
            raise ValueError(f"margin must be in [0, 1), got {self.margin}")
        if not self.tau > 0.0:
            raise ValueError(f"tau must be > 0, got {self.tau}")
        if self.min_lists < 1 or self.max_lists < self.min_lists:
            raise ValueError(f"need 1 <= min_lists <= max_lists, got {self.min_lists} and {self.max_lists}")

    def snapshot(self) -> dict[str, float]:
        """The running interval and p-value, to carry the test over to another process (`resume`)."""
        return {"low": self._low, "high": self._high, "p_value": self._p_value}

    def resume(self, snapshot: dict[str, float] | None) -> SequentialTest:
        """Continue a test from its `snapshot`: the interval keeps narrowing from where it was, as if the
        earlier looks had been taken by this object. Returns self."""
        if snapshot:
            self._low, self._high = float(snapshot["low"]), float(snapshot["high"])
            self._p_value = float(snapshot["p_value"])
        return self

    def update(
        self,
        champion_lists: int,
        champion_clicks: int,
        challenger_lists: int,
        challenger_clicks: int,
        champion_deff: float = 1.0,
        challenger_deff: float = 1.0,
    ) -> Decision:
        """The decision on the cumulative counts so far (lists served, lists with a click, per arm), each arm's
        variance multiplied by its design effect (at least 1) for the users' repeated lists."""
        _check_counts("champion", champion_lists, champion_clicks)
        _check_counts("challenger", challenger_lists, challenger_clicks)
        counts = (champion_lists, champion_clicks, challenger_lists, challenger_clicks)
        if any(now < before for now, before in zip(counts, self._seen, strict=True)):
            raise ValueError(f"counts are cumulative and cannot go down: {self._seen} -> {counts}")
        self._seen = counts
        if self._final is not None:
            return self._final

        n_a, n_b = max(champion_lists, 1), max(challenger_lists, 1)
        rate_a, rate_b = champion_clicks / n_a, challenger_clicks / n_b
        diff = rate_b - rate_a
        # half a click of shrinkage keeps the variance of an arm with no clicks (or all clicks) above zero
        q_a, q_b = (champion_clicks + 0.5) / (n_a + 1.0), (challenger_clicks + 0.5) / (n_b + 1.0)
        deff_a, deff_b = max(champion_deff, 1.0), max(challenger_deff, 1.0)
        variance = deff_a * q_a * (1.0 - q_a) / n_a + deff_b * q_b * (1.0 - q_b) / n_b
        lists = min(champion_lists, challenger_lists)
        if lists >= self.min_lists:
            half = mixture_half_width(variance, self.alpha, self.tau)
            self._low, self._high = max(self._low, diff - half), min(self._high, diff + half)
            lr = mixture_log_likelihood_ratio(diff, variance, self.tau)
            self._p_value = min(self._p_value, math.exp(-max(lr, 0.0)))

        worst = -self.margin * rate_a
        shown = (
            f"challenger {100 * rate_b:.2f}% vs champion {100 * rate_a:.2f}% "
            f"(diff {_pts(diff)}, {1 - self.alpha:.0%} interval [{_pts(self._low)}, {_pts(self._high)}]) "
            f"after {lists:,} lists per arm"
            + (f", design effects {deff_a:.2f} and {deff_b:.2f}" if deff_a > 1.0 or deff_b > 1.0 else "")
        )
        verdict: Verdict
        if lists < self.min_lists:
            verdict, why = "continue", f"fewer than {self.min_lists:,} lists per arm"
        elif self._high < 0.0:
            verdict, why = "withdraw", "worse: the upper bound is below 0"
        elif self._low > worst:
            verdict, why = "promote", f"not worse by {self.margin:.0%}: the lower bound is above {_pts(worst)}"
        elif lists >= self.max_lists:
            verdict, why = "inconclusive", f"{self.max_lists:,} lists reached, neither worse nor within {_pts(worst)}"
        else:
            verdict, why = "continue", f"the interval straddles {_pts(worst)} or 0"
        decision = Decision(
            verdict=verdict,
            estimate=diff,
            low=self._low,
            high=self._high,
            champion_ctr=rate_a,
            challenger_ctr=rate_b,
            champion_lists=champion_lists,
            challenger_lists=challenger_lists,
            p_value=self._p_value,
            reason=f"{verdict}: {why}; {shown}",
        )
        if verdict != "continue":
            self._final = decision
        return decision
