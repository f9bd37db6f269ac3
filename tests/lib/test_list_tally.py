"""The canary gate's running counts (`lib/list_tally.py`): fed the event log a few lines at a time, across
looks, with the state going to JSON and back between them (a restarted sensor), they equal the full read of
every segment (`lib/canary.lists_since`) after every look; and they forget a list after the attribution window."""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys_assets.contract.attribution import EVENT_LOG_COLUMNS
from recsys_assets.contract.canary import CanaryConfig
from recsys_assets.contract.storage import Storage
from recsys_assets.lib import canary as gate
from recsys_assets.lib import list_tally
from recsys_assets.lib.list_tally import Tally, counts_of, design_effects_of, user_unit
from recsys_assets.tools.cli import canary_command

START = pd.Timestamp("2026-12-01T10:00:00Z")
WINDOW = pd.Timedelta(minutes=120)


def line(kind: str, rid: str, at: pd.Timedelta, item: str = "i1", **fields: object) -> str:
    """One event-log line as the API writes it; `at` after START."""
    row = {
        "user_id": "u1",
        "item_id": item,
        "event_type": kind,
        "timestamp": (START + at).isoformat(),
        "recommendation_id": rid,
        **fields,
    }
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([row.get(c, "") for c in EVENT_LOG_COLUMNS])
    return buf.getvalue()


def impression(rid: str, arm: str, version: str, at: pd.Timedelta, items: int = 2, user: str = "u1") -> str:
    return "".join(
        line(
            "impression", rid, at, f"i{n}", value=n, event_id=f"{rid}:{n}", arm=arm, model_version=version, user_id=user
        )
        for n in range(1, items + 1)
    )


def append(directory: Path, name: str, text: str) -> None:
    path = directory / name
    with open(path, "a") as fh:
        if fh.tell() == 0:
            fh.write(",".join(EVENT_LOG_COLUMNS) + "\n")
        fh.write(text)


def look(tally: Tally, directory: Path, window: pd.Timedelta = WINDOW) -> Tally:
    """One look, after a round trip of the state through JSON, checked against the full read."""
    tally = Tally.from_json(json.loads(json.dumps(tally.to_json())))
    tally.advance(directory, START, window)
    full = gate.lists_since(directory, START)
    assert tally.counts() == counts_of(full)
    effects = design_effects_of(full)
    assert tally.design_effects() == {key: pytest.approx(value) for key, value in effects.items()}
    return tally


def minutes(n: float) -> pd.Timedelta:
    return pd.Timedelta(minutes=n)


def test_counts_equal_the_full_read_as_lines_and_segments_arrive(tmp_path: Path) -> None:
    events = tmp_path / "events"
    events.mkdir()
    # a segment last written before the start is not read, by either
    append(events, "events-0-old.csv", impression("r9", "champion", "A", minutes(-90)))
    old = (START - minutes(60)).timestamp()
    os.utime(events / "events-0-old.csv", (old, old))

    # look 1: three lists, a click on r1, a list served before the start and its click after it, and r4's
    # first impression written, its second still being written
    r4 = impression("r4", "champion", "A", minutes(3), items=2)
    cut = r4.index("\n") + 30
    append(
        events,
        "events-1-a.csv",
        impression("r0", "champion", "A", minutes(-5))
        + impression("r1", "champion", "A", minutes(1))
        + impression("r2", "challenger", "B", minutes(1))
        + impression("r3", "champion", "A", minutes(2))
        + line("click", "r1", minutes(2), event_id="c1")
        + line("click", "r0", minutes(2), event_id="c0")
        + r4[:cut],
    )
    tally = look(Tally(), events)
    assert tally.counts() == {("champion", "A"): (3, 1, 0), ("challenger", "B"): (1, 0, 0)}

    # look 2: r4's second line completes (the list is counted once); r2's click a look after its list; a
    # purchase on r3; a new segment (another worker) with r5, its rating of 5, a view, and a click on r6, whose
    # list the first worker has not flushed yet
    append(
        events,
        "events-1-a.csv",
        r4[cut:] + line("click", "r2", minutes(4), event_id="c2") + line("purchase", "r3", minutes(5), event_id="p3"),
    )
    append(
        events,
        "events-2-b.csv",
        impression("r5", "challenger", "B", minutes(5))
        + line("rating", "r5", minutes(6), value=5, event_id="s5")
        + line("view", "r5", minutes(6), event_id="v5")
        + line("click", "r6", minutes(7), event_id="c6"),
    )
    tally = look(tally, events)
    assert tally.counts()[("challenger", "B")] == (2, 1, 1)

    # look 3: r6's impressions arrive after its click; a click resent, a second click on r2, a list from a
    # worker on the previous split (another version), and a rating that does not convert
    append(
        events,
        "events-1-a.csv",
        impression("r6", "challenger", "B", minutes(6))
        + line("click", "r1", minutes(2), event_id="c1")
        + line("click", "r2", minutes(8), item="i2", event_id="c2b")
        + impression("r7", "champion", "Z", minutes(8)),
    )
    append(events, "events-2-b.csv", line("rating", "r7", minutes(9), value=3, event_id="s7"))
    tally = look(tally, events)
    assert tally.counts() == {
        ("champion", "A"): (3, 1, 1),
        ("challenger", "B"): (3, 2, 1),
        ("champion", "Z"): (1, 0, 0),
    }
    assert look(tally, events).counts() == tally.counts()  # nothing new: nothing changes


def test_counts_equal_the_full_read_on_a_random_log_cut_into_many_looks(tmp_path: Path) -> None:
    """Lists served over an hour by three workers (the third starts halfway) to 30 users of unequal click rates,
    each list's impressions written up to two minutes late (a worker's buffer, stretched so that many clicks are
    read a look before their list), clicks and conversions minutes later in any worker's segment, some sent
    twice."""
    rng = np.random.default_rng(5)
    rates = rng.uniform(0.05, 0.6, 30)
    events = tmp_path / "events"
    events.mkdir()
    writes: list[tuple[float, str, str]] = []  # (seconds after START the line is written, segment, line)
    for n in range(400):
        served = rng.uniform(0, 3600)
        worker = int(rng.integers(0, 3 if served > 1800 else 2))
        arm, version = ("challenger", "B") if rng.random() < 0.3 else ("champion", "A")
        rid, user = f"r{n}", int(rng.integers(0, 30))
        text = impression(rid, arm, version, pd.Timedelta(seconds=served), int(rng.integers(1, 4)), f"u{user}")
        writes.append((served + rng.uniform(0, 120), f"events-{worker}.csv", text))
        for kind, p in (("click", rates[user]), ("purchase", 0.08), ("rating", 0.1)):
            if rng.random() < p:
                at = served + rng.uniform(1, 300)
                value, event_id = int(rng.integers(1, 6)), f"{kind}{n}"
                text = line(kind, rid, pd.Timedelta(seconds=at), value=value, event_id=event_id, user_id=f"u{user}")
                for _ in range(1 + int(rng.random() < 0.2)):
                    writes.append((at, f"events-{int(rng.integers(0, 3 if at > 1800 else 2))}.csv", text))
    writes.sort(key=lambda w: w[0])
    tally, looks, written = Tally(), 0, 0
    for tick in np.arange(20, 4000, 45):
        while written < len(writes) and writes[written][0] <= tick:
            append(events, writes[written][1], writes[written][2])
            written += 1
        tally = look(tally, events)
        looks += 1
    assert written == len(writes) and looks > 80
    counts = tally.counts()
    assert counts[("champion", "A")][0] + counts[("challenger", "B")][0] == 400
    assert all(clicked > 0 and converted > 0 for _, clicked, converted in counts.values())
    # users who click more than others: their lists are not independent
    assert tally.design_effects()[("champion", "A")][0] > 1.5


def test_the_user_sample_halves_and_keeps_whole_counts_for_the_users_it_keeps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(list_tally, "MAX_USERS", 10)
    events = tmp_path / "events"
    events.mkdir()
    tally = Tally()
    for n in range(120):
        user = f"u{n % 40}"
        text = impression(f"r{n}", "champion", "A", minutes(n / 2), user=user)
        if n % 3 == 0:
            text += line("click", f"r{n}", minutes(n / 2 + 0.1), user_id=user)
        append(events, "events-0.csv", text)
        if n % 10 == 9:  # a look, the state through JSON and back first
            tally = Tally.from_json(json.loads(json.dumps(tally.to_json())))
            tally.advance(events, START, WINDOW)
            assert tally.counts() == counts_of(gate.lists_since(events, START))
    full = gate.lists_since(events, START)
    per_user = full.groupby("user_id").agg(lists=("clicked", "size"), clicked=("clicked", "sum"))
    kept = tally.users[0]
    assert 0 < len(kept) <= 10 and tally.rate < 1.0
    assert all(user_unit(u) < tally.rate for u in kept)
    # every user below the threshold is kept, with the counts of the full read
    assert set(kept) == {u for u in per_user.index if user_unit(u) < tally.rate}
    assert all(kept[u][:2] == [per_user.loc[u, "lists"], per_user.loc[u, "clicked"]] for u in kept)
    summary = tally.summary()
    assert summary["sampled_users"] == len(kept) and "users" not in summary


def test_a_list_is_forgotten_after_the_attribution_window(tmp_path: Path) -> None:
    events = tmp_path / "events"
    events.mkdir()
    window = minutes(30)
    append(events, "events-1.csv", impression("r1", "champion", "A", minutes(0)))
    tally = look(Tally(), events, window)
    # a click within the window counts, as in the full read
    append(events, "events-1.csv", line("click", "r1", minutes(25), event_id="c1"))
    tally = look(tally, events, window)
    assert tally.counts()[("champion", "A")] == (1, 1, 0)
    # lists served long after: r1 is forgotten; a purchase on it now is not counted (the full read counts it)
    append(events, "events-1.csv", impression("r2", "champion", "A", minutes(90)))
    tally.advance(events, START, window)
    assert tally.summary()["open_lists"] == 1
    append(events, "events-1.csv", line("purchase", "r1", minutes(95), event_id="p1"))
    tally.advance(events, START, window)
    assert tally.counts()[("champion", "A")] == (2, 1, 0)
    assert counts_of(gate.lists_since(events, START))[("champion", "A")] == (2, 1, 1)
    assert tally.summary()["early_feedback"] == 1  # the purchase waits for a list that will not come, then goes


def test_the_gate_keeps_its_counts_in_the_state_and_resumes_from_a_state_written_without_them(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    store = Storage.from_uri(str(tmp_path / "data"))
    events = tmp_path / "events"
    events.mkdir()
    arm = {"model": "M", "registry_version": "1"}
    state = gate.GateState(
        "canary",
        START.isoformat(),
        "salt",
        0.5,
        {**arm, "model_version": "A"},
        {**arm, "model_version": "B"},
    )
    doc = dict(vars(state))
    del doc["tally"]  # a state file from before the running counts
    store.write_text(json.dumps(doc), "artifacts", "CANARY.json")
    config = CanaryConfig(min_lists=1000, max_lists=5000, holdout_max_lists=5000)
    append(events, "events-1.csv", impression("r1", "champion", "A", minutes(1)))
    append(events, "events-1.csv", impression("r2", "challenger", "B", minutes(1)))
    outcome = gate.step(None, store, config, events)  # type: ignore[arg-type]  # a `continue` touches no registry
    assert outcome is not None and outcome.verdict == "continue"
    append(events, "events-1.csv", line("click", "r2", minutes(2), event_id="c2"))
    gate.step(None, store, config, events)  # type: ignore[arg-type]
    stored = gate.read_state(store)
    assert stored is not None and stored.looks == 2
    assert stored.tally["files"] == {"events-1.csv": (events / "events-1.csv").stat().st_size}
    assert Tally.from_json(stored.tally).counts() == {("champion", "A"): (1, 0, 0), ("challenger", "B"): (1, 1, 0)}
    assert stored.last is not None and stored.last["challenger_clicks"] == 1
    # `champion canary` shows the counts and how many lists are remembered, not the lists
    canary_command(store, argparse.Namespace(action="canary"))
    shown = capsys.readouterr().out
    assert '"open_lists": 2' in shown and "r1:" not in shown
