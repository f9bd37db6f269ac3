"""The canary gate's look: which lists count for which arm, the holdout's turned roles, the conversion test,
and a test carried over between looks (the sensor's ticks) through the stored state."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from recsys_assets.contract.canary import CanaryConfig, in_challenger_arm
from recsys_assets.lib.canary import GateState, look
from recsys_assets.lib.list_tally import counts_of

CONFIG = CanaryConfig(min_lists=100, max_lists=100_000, conversion=True)


def lists(rows: list[tuple[str, str, int, float, float]], seed: int = 0) -> pd.DataFrame:
    """Served lists: (arm, model_version, n, click rate, conversion rate) per group."""
    rng = np.random.default_rng(seed)
    frames = [
        pd.DataFrame(
            {
                "arm": arm,
                "model_version": version,
                "clicked": rng.random(n) < ctr,
                "converted": rng.random(n) < conversion,
            }
        )
        for arm, version, n, ctr, conversion in rows
    ]
    return pd.concat(frames, ignore_index=True)


def state(phase: str = "canary") -> GateState:
    return GateState(
        phase=phase,  # type: ignore[arg-type]
        started_at="2026-12-01T00:00:00+00:00",
        salt="s",
        share=0.1,
        champion={"model": "Hybrid", "model_version": "A", "registry_version": "1"},
        challenger={"model": "MultiVAE", "model_version": "B", "registry_version": "2"},
    )


def test_only_the_arms_own_versions_count() -> None:
    s = state()
    served = lists(
        [
            ("champion", "A", 900, 0.10, 0.0),
            ("challenger", "B", 300, 0.10, 0.0),
            # a worker still on the previous split for a poll, and an older champion: not counted
            ("champion", "B", 50, 1.0, 0.0),
            ("challenger", "Z", 50, 0.0, 0.0),
        ]
    )
    verdict, decisions, counts = look(s, CONFIG, counts_of(served))
    assert counts["champion"][0] == 900 and counts["challenger"][0] == 300
    assert set(decisions) == {"ctr"}  # no conversion in either arm: CTR alone decides
    assert verdict == "continue" and s.looks == 1


def test_a_worse_canary_is_withdrawn_and_a_drop_in_the_holdout_is_the_new_champions() -> None:
    served = lists([("champion", "A", 3000, 0.12, 0.0), ("challenger", "B", 3000, 0.06, 0.0)])
    verdict, decisions, _ = look(state("canary"), CONFIG, counts_of(served))
    assert verdict == "withdraw" and decisions["ctr"].high < 0
    # in a holdout the API's champion (A, the new one) is under test against the held-out B: A leads on the
    # same counts, so the holdout ends with A kept
    verdict, decisions, _ = look(state("holdout"), CONFIG, counts_of(served))
    assert verdict == "promote" and decisions["ctr"].estimate > 0
    served = lists([("champion", "A", 3000, 0.06, 0.0), ("challenger", "B", 3000, 0.12, 0.0)])
    verdict, _, _ = look(state("holdout"), CONFIG, counts_of(served))
    assert verdict == "withdraw"  # the new champion dropped: the caller rolls back


def test_a_canary_as_clicked_but_converting_less_is_withdrawn() -> None:
    served = lists([("champion", "A", 6000, 0.10, 0.08), ("challenger", "B", 6000, 0.10, 0.02)], seed=3)
    verdict, decisions, counts = look(state(), CONFIG, counts_of(served))
    assert set(decisions) == {"ctr", "conversion"} and counts["challenger"][2] > 0
    assert decisions["conversion"].verdict == "withdraw" and decisions["ctr"].verdict != "withdraw"
    assert verdict == "withdraw"
    # without the conversion test the same traffic does not withdraw it
    verdict, decisions, _ = look(state(), CONFIG.model_copy(update={"conversion": False}), counts_of(served))
    assert set(decisions) == {"ctr"} and verdict != "withdraw"


def test_the_interval_carries_over_between_looks_through_the_stored_state() -> None:
    first = lists([("champion", "A", 800, 0.10, 0.0), ("challenger", "B", 800, 0.30, 0.0)], seed=1)
    s = state()
    look(s, CONFIG, counts_of(first))
    low_first = s.tests["ctr"]["low"]
    # the state goes to JSON and back (the next sensor tick); a look on more lists keeps the narrower bound
    s2 = GateState(**json.loads(json.dumps(dataclasses.asdict(s))))
    more = pd.concat([first, lists([("champion", "A", 400, 0.10, 0.0), ("challenger", "B", 400, 0.0, 0.0)])])
    _, decisions, _ = look(s2, CONFIG, counts_of(more))
    fresh = GateState(**{**dataclasses.asdict(state()), "tests": {}})
    _, alone, _ = look(fresh, CONFIG, counts_of(more))
    assert decisions["ctr"].low >= low_first and decisions["ctr"].low >= alone["ctr"].low
    assert s2.looks == 2


def test_each_canary_assigns_users_anew() -> None:
    users = [str(u) for u in range(20_000)]
    a = {u for u in users if in_challenger_arm(u, 0.1, "first")}
    b = {u for u in users if in_challenger_arm(u, 0.1, "second")}
    assert 0.09 < len(a) / len(users) < 0.11 and 0.09 < len(b) / len(users) < 0.11
    assert len(a & b) < 0.2 * len(a)  # independent splits overlap by about the share
    # no salt: the operator's A/B split as before
    assert {u for u in users[:200] if in_challenger_arm(u, 0.5)} == {
        u for u in users[:200] if in_challenger_arm(u, 0.5, "")
    }


def test_each_arm_s_design_effect_widens_its_metric_s_interval() -> None:
    served = lists([("champion", "A", 3000, 0.10, 0.02), ("challenger", "B", 3000, 0.085, 0.02)])
    _, alone, _ = look(state(), CONFIG, counts_of(served))
    # the users' repeated lists make the champion's CTR four times as variable as independent lists would
    effects = {("champion", "A"): (4.0, 1.0), ("challenger", "B"): (1.0, 1.0)}
    _, clustered, _ = look(state(), CONFIG, counts_of(served), effects)
    ctr, ctr_alone = clustered["ctr"], alone["ctr"]
    assert ctr.estimate == ctr_alone.estimate and ctr.high - ctr.low > 1.5 * (ctr_alone.high - ctr_alone.low)
    assert clustered["conversion"].high - clustered["conversion"].low == pytest.approx(
        alone["conversion"].high - alone["conversion"].low
    )
    assert "design effects 4.00 and 1.00" in ctr.reason
    # in a holdout the roles turn round, and so do the design effects: the API's champion is under test
    _, holdout, _ = look(state("holdout"), CONFIG, counts_of(served), effects)
    assert "design effects 1.00 and 4.00" in holdout["ctr"].reason
    # below 1 (users whose lists disagree more than independent ones would) counts as 1
    _, low, _ = look(state(), CONFIG, counts_of(served), {("champion", "A"): (0.3, 0.3)})
    assert low["ctr"].high - low["ctr"].low == pytest.approx(ctr_alone.high - ctr_alone.low)
