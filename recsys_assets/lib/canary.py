"""The canary gate: a challenger earns the champion's place on what users do, and a drop after it rolls back.

Public: `GateState`, `Outcome`, `start_canary`, `start_holdout`, `look`, `apply`, `step`, `stop`,
`close_split`, `read_state`, `read_decisions`, `lists_since`, `DECISION_COLUMNS`.

The states, kept in `artifacts/CANARY.json` (`contract.canary.CANARY_STATE`) beside the pointer the API
follows (`artifacts/CHALLENGER.json`, whose `role`, `share` and `salt` set the API's split):

* **canary**: the challenger serves `share` of users. Each look counts both arms' lists since the canary
  started, per model version (a worker still serving the previous split for one poll is not counted), and
  runs `lib/sequential.SequentialTest` on list CTR and, once either arm has one, on conversion per list
  (alpha split between them). `withdraw` on either metric withdraws the canary; `promote` on every tested
  metric promotes it (the MLflow `champion` alias moves, `lib/champion.promote`, and the pointer follows);
  `inconclusive` (the smaller arm reached `max_lists`) withdraws it without calling it worse.
* **holdout**: after a promotion the previous champion keeps `holdout_share` of users, and the test runs
  with the roles turned round: the new champion is the one under test. `withdraw` (the new champion is
  worse) rolls back to the previous champion; `promote` or `inconclusive` (after `holdout_max_lists`) ends
  the holdout and the new champion stays.

A look reads only the lines the API appended to its event-log segments since the previous look, and adds them
to running counts (`lib/list_tally.py`: lists, clicked and converted lists per arm and model version, with each
segment's byte offset and the lists served within `attribution_minutes`, to which a later click or conversion
still counts); they are kept in the state, so a restarted sensor goes on where it stopped.

Every start and every verdict other than `continue` is appended to the `promotion_decisions` table with its
evidence (lists, clicks and conversions per arm, the CTRs, the difference and its always-valid interval, the
p-value); the console's Models page shows it. The state keeps each test's running interval, so a look taken
by another process (the next sensor tick) continues the same confidence sequence.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from recsys_assets.contract import attribution
from recsys_assets.contract.artifact import CHALLENGER_POINTER, read_pointer
from recsys_assets.contract.canary import CANARY_STATE, OPEN_ROLES, CanaryConfig
from recsys_assets.contract.events import PROMOTION_DECISIONS
from recsys_assets.contract.storage import Storage
from recsys_assets.lib import champion as registry
from recsys_assets.lib import live_windows as live
from recsys_assets.lib.list_tally import DesignEffects, ListCounts, Tally
from recsys_assets.lib.sequential import Decision, SequentialTest
from recsys_assets.lib.tracking import CHAMPION, MlflowTracking

Phase = Literal["canary", "holdout"]
# per API arm (`champion`, `challenger`): lists served, lists clicked, lists converted
Counts = dict[str, tuple[int, int, int]]
ACTOR = "canary gate"
METRICS = ("ctr", "conversion")
DECISION_COLUMNS: tuple[str, ...] = (
    "at",
    "phase",
    "verdict",
    "action",
    "champion_model",
    "champion_version",
    "challenger_model",
    "challenger_version",
    "champion_lists",
    "champion_clicks",
    "champion_conversions",
    "challenger_lists",
    "challenger_clicks",
    "challenger_conversions",
    "champion_ctr",
    "challenger_ctr",
    "estimate",
    "low",
    "high",
    "p_value",
    "conversion_estimate",
    "conversion_low",
    "conversion_high",
    "reason",
)
_TEXT = (*DECISION_COLUMNS[1:8], "reason")


@dataclass
class GateState:
    """An open canary or holdout. `champion` is the arm the API calls champion, `challenger` the other one
    (the canary; in a holdout, the previous champion); each a dict with `model`, `model_version` and
    `registry_version`. `tests` holds each metric's `SequentialTest.snapshot()`, `tally` the running counts of
    the event log (`list_tally.Tally.to_json`; a state written without them reads the log again from the
    start)."""

    phase: Phase
    started_at: str
    salt: str
    share: float
    champion: dict[str, str]
    challenger: dict[str, str]
    tests: dict[str, dict[str, float]] = field(default_factory=dict)
    looks: int = 0
    last: dict[str, Any] | None = None
    tally: dict[str, Any] = field(default_factory=dict)

    @property
    def under_test(self) -> dict[str, str]:
        """The model whose place is decided: the canary, or in a holdout the new champion."""
        return self.challenger if self.phase == "canary" else self.champion


@dataclass(frozen=True)
class Outcome:
    """One look: the combined verdict, each metric's decision, and what was done about it."""

    verdict: str
    decisions: dict[str, Decision]
    action: str
    reason: str


# ---------------------------------------------------------------------------------------------
# State and records
# ---------------------------------------------------------------------------------------------


def read_state(store: Storage) -> GateState | None:
    """The open canary or holdout, or None."""
    if not store.exists(*CANARY_STATE):
        return None
    doc = json.loads(store.read_bytes(*CANARY_STATE))
    return GateState(**doc) if doc.get("phase") in ("canary", "holdout") else None


def _write_state(store: Storage, state: GateState | None, closed: dict[str, Any] | None = None) -> None:
    doc = asdict(state) if state is not None else {"phase": "closed", "last": closed}
    store.write_text(json.dumps(doc, indent=2, default=str), *CANARY_STATE)


def read_decisions(store: Storage) -> pd.DataFrame:
    """Every recorded start and verdict, oldest first (empty before the first)."""
    name = f"{PROMOTION_DECISIONS}.parquet"
    if not store.exists(name):
        return pd.DataFrame({c: pd.Series(dtype="object") for c in DECISION_COLUMNS})
    return store.read_table(name)


def _typed(table: pd.DataFrame) -> pd.DataFrame:
    table = table.copy()
    table["at"] = pd.to_datetime(table["at"], utc=True)
    for col in DECISION_COLUMNS[1:]:
        if col in _TEXT:
            table[col] = table[col].astype("string")
        else:
            table[col] = pd.to_numeric(table[col], errors="coerce").astype("float64")
    return table[list(DECISION_COLUMNS)]


def _record(store: Storage, row: dict[str, Any]) -> None:
    full = {c: row.get(c) for c in DECISION_COLUMNS}
    full["at"] = pd.Timestamp(full["at"] or dt.datetime.now(dt.UTC))
    earlier = read_decisions(store)
    new = _typed(pd.DataFrame([full]))
    table = pd.concat([_typed(earlier), new], ignore_index=True) if len(earlier) else new
    store.write_table(table, f"{PROMOTION_DECISIONS}.parquet")


def _base_row(state: GateState, verdict: str, action: str, reason: str) -> dict[str, Any]:
    return {
        "phase": state.phase,
        "verdict": verdict,
        "action": action,
        "champion_model": state.champion["model"],
        "champion_version": state.champion["registry_version"],
        "challenger_model": state.challenger["model"],
        "challenger_version": state.challenger["registry_version"],
        "reason": reason,
    }


# ---------------------------------------------------------------------------------------------
# Opening a canary or a holdout
# ---------------------------------------------------------------------------------------------


def _arm(pointer: dict[str, Any]) -> dict[str, str]:
    """An arm of the state (`GateState.champion`, `.challenger`) from a serving pointer."""
    return {k: str(pointer.get(k, "")) for k in ("model", "model_version", "registry_version")}


def _label(arm: dict[str, str]) -> str:
    """An arm as a decision's action names it: `model_version (model, registry version N)`."""
    return f"{arm['model_version']} ({arm['model']}, registry version {arm['registry_version']})"


def _open(
    store: Storage,
    tracking: MlflowTracking,
    phase: Phase,
    share: float,
    serving: str,
    other: str,
    reason: str,
    salt: str = "",
) -> GateState:
    """Point the API's split at registry version `other` (`share` of users) beside champion `serving`."""
    champion = registry.pointer_for(tracking, store, _version(tracking, serving))
    pointer = registry.pointer_for(tracking, store, _version(tracking, other), verify=True)
    earlier = read_state(store)
    if earlier is not None:
        _record(store, _base_row(earlier, "superseded", f"{earlier.phase} closed", f"superseded: {reason}"))
    now = dt.datetime.now(dt.UTC).isoformat()
    salt = salt or uuid.uuid4().hex[:12]
    state = GateState(phase, now, salt, share, _arm(champion), _arm(pointer))
    registry.write_pointer(store, {**pointer, "role": phase, "share": share, "salt": salt}, CHALLENGER_POINTER)
    _write_state(store, state)
    _record(store, {**_base_row(state, "start", f"{phase} opened at {share:.0%} of users", reason), "at": now})
    return state


def _version(tracking: MlflowTracking, version: str) -> dict:
    info = tracking.version_info(str(version))
    if info is None:
        raise LookupError(f"registered model {tracking.registered_model!r} has no version {version!r}")
    return info


def _champion_version(tracking: MlflowTracking) -> str:
    info = tracking.alias_version(CHAMPION)
    if info is None:
        raise LookupError(f"registered model {tracking.registered_model!r} has no `{CHAMPION}` alias: no champion")
    return str(info["version"])


def start_canary(
    tracking: MlflowTracking, store: Storage, config: CanaryConfig, version: str, reason: str = "", salt: str = ""
) -> GateState:
    """Serve registry `version` to `config.share` of users as a canary of the current champion; `salt` (default:
    random) chooses which users."""
    champion = _champion_version(tracking)
    return _open(store, tracking, "canary", config.share, champion, version, reason or "passed offline", salt)


def start_holdout(
    tracking: MlflowTracking, store: Storage, config: CanaryConfig, previous: str, reason: str = ""
) -> GateState | None:
    """Keep registry version `previous` (the champion before this one) on `config.holdout_share` of users;
    None (and the split closed) when the holdout share is 0."""
    if config.holdout_share <= 0:
        earlier = read_state(store)
        if earlier is not None:  # a canary that was open when the champion moved
            _record(store, _base_row(earlier, "superseded", f"{earlier.phase} closed", f"superseded: {reason}"))
        close_split(store, "ended", earlier)
        return None
    current = _champion_version(tracking)
    return _open(store, tracking, "holdout", config.holdout_share, current, previous, reason or "new champion")


def close_split(store: Storage, role: str, state: GateState | None = None, last: dict | None = None) -> None:
    """Stop serving the challenger (its pointer's share set to 0) and close the gate's state."""
    pointer = read_pointer(store, CHALLENGER_POINTER)
    if pointer is not None and pointer.get("role") in OPEN_ROLES:
        registry.write_pointer(store, {**pointer, "role": role, "share": 0.0}, CHALLENGER_POINTER)
    if state is not None or store.exists(*CANARY_STATE):
        _write_state(store, None, last)


def stop(store: Storage, actor: str, reason: str = "") -> GateState | None:
    """Close the open canary or holdout now (an operator's call): the champion serves every user, nothing is
    promoted or rolled back. None when none is open."""
    state = read_state(store)
    if state is None:
        return None
    _record(store, _base_row(state, "stopped", f"{state.phase} closed by {actor}", reason or f"stopped by {actor}"))
    close_split(store, "withdrawn", state, state.last)
    return state


# ---------------------------------------------------------------------------------------------
# Looking at the log
# ---------------------------------------------------------------------------------------------


def lists_since(events_dir: str | Path, since: str | dt.datetime) -> pd.DataFrame:
    """Served lists (`contract.attribution.served_lists`) of the API's event-log segments, served at or after
    `since`; segments last written before it are not read. Every segment is read whole: for a one-off report
    (a look keeps running counts instead, `list_tally.Tally`)."""
    start = _utc(since)
    frames = []
    for path in live.segments(events_dir):
        if pd.Timestamp(path.stat().st_mtime, unit="s", tz="UTC") < start:
            continue
        frames.append(live.read_segment(path))
    if not frames:
        return attribution.served_lists(attribution.prepare_events(pd.DataFrame()))
    events = attribution.prepare_events(pd.concat(frames, ignore_index=True))
    lists = attribution.served_lists(events[events["timestamp"] >= start])
    return lists


def _utc(since: str | dt.datetime) -> pd.Timestamp:
    start = pd.Timestamp(since)
    return start.tz_localize("UTC") if start.tzinfo is None else start


def _combine(decisions: dict[str, Decision]) -> str:
    verdicts = [d.verdict for d in decisions.values()]
    if "withdraw" in verdicts:
        return "withdraw"
    if "continue" in verdicts:
        return "continue"
    return "inconclusive" if "inconclusive" in verdicts else "promote"


def look(
    state: GateState, config: CanaryConfig, lists: ListCounts, effects: DesignEffects | None = None
) -> tuple[str, dict[str, Decision], Counts]:
    """The combined verdict on the lists served since the state opened (their counts per API arm and model
    version, and the design effects of their rates: `list_tally.design_effect`), each metric's decision, and
    each API arm's (lists, clicked lists, converted lists) for the state's versions; the state's running
    intervals move on (the caller writes the state back)."""
    keys = ("champion", state.champion["model_version"]), ("challenger", state.challenger["model_version"])
    champion, challenger = (lists.get(key, (0, 0, 0)) for key in keys)
    deff_a, deff_b = ((effects or {}).get(key, (1.0, 1.0)) for key in keys)
    counts = {"champion": champion, "challenger": challenger}
    if state.phase == "holdout":  # the new champion is under test against the previous one
        champion, challenger = challenger, champion
        deff_a, deff_b = deff_b, deff_a
    metrics = METRICS if config.conversion else METRICS[:1]
    alpha = config.alpha / len(metrics)
    cap = config.max_lists if state.phase == "canary" else config.holdout_max_lists
    decisions: dict[str, Decision] = {}
    for index, metric in enumerate(metrics, start=1):
        if metric == "conversion" and champion[2] + challenger[2] == 0:
            continue  # no conversion in either arm yet (or a log without them): CTR decides
        test = SequentialTest(alpha=alpha, margin=config.margin, max_lists=cap, min_lists=config.min_lists)
        test.resume(state.tests.get(metric))
        decisions[metric] = test.update(
            champion[0], champion[index], challenger[0], challenger[index], deff_a[index - 1], deff_b[index - 1]
        )
        state.tests[metric] = test.snapshot()
    state.looks += 1
    return _combine(decisions), decisions, counts


def _evidence(decisions: dict[str, Decision], counts: Counts) -> dict[str, Any]:
    """The columns of a decision row: each API arm's counts and rates, and each test's difference (the model
    under test minus the other) with its interval."""
    row: dict[str, Any] = {}
    for arm, (lists, clicks, conversions) in counts.items():
        row.update(
            {
                f"{arm}_lists": lists,
                f"{arm}_clicks": clicks,
                f"{arm}_conversions": conversions,
                f"{arm}_ctr": clicks / lists if lists else None,
            }
        )
    if "ctr" in decisions:
        ctr = decisions["ctr"]
        row.update(estimate=ctr.estimate, low=ctr.low, high=ctr.high, p_value=ctr.p_value)
    if "conversion" in decisions:
        conv = decisions["conversion"]
        row.update(conversion_estimate=conv.estimate, conversion_low=conv.low, conversion_high=conv.high)
    return row


# ---------------------------------------------------------------------------------------------
# Acting on a verdict
# ---------------------------------------------------------------------------------------------


def apply(
    tracking: MlflowTracking,
    store: Storage,
    config: CanaryConfig,
    state: GateState,
    verdict: str,
    decisions: dict[str, Decision],
    counts: Counts,
) -> Outcome:
    """Act on a look's verdict (promote, withdraw, roll back, end the holdout, or keep looking), record it
    and write the state back."""
    reason = "; ".join(f"{m}: {d.reason}" for m, d in decisions.items()) or "no lists yet"
    state.last = {"verdict": verdict, "reason": reason, "at": dt.datetime.now(dt.UTC).isoformat()}
    state.last.update(_evidence(decisions, counts))
    if verdict == "continue":
        _write_state(store, state)
        return Outcome(verdict, decisions, "none", reason)
    under = state.under_test
    if state.phase == "canary" and verdict == "promote":
        action = f"promoted {_label(under)}"
        previous = state.champion["registry_version"]
        registry.promote(tracking, store, under["registry_version"], ACTOR, f"canary: {reason}", registry.PROMOTE)
        _record(store, {**_base_row(state, verdict, action, reason), **_evidence(decisions, counts)})
        _write_state(store, None, state.last)
        start_holdout(tracking, store, config, previous, f"promoted by the canary gate: version {previous} held out")
        return Outcome(verdict, decisions, action, reason)
    if state.phase == "holdout" and verdict == "withdraw":
        back = state.challenger
        action = f"rolled back to {_label(back)}"
        registry.promote(tracking, store, back["registry_version"], ACTOR, f"holdout: {reason}", registry.ROLLBACK)
    elif state.phase == "canary":
        action = f"withdrew {_label(under)}"
    else:
        action = f"holdout ended; {_label(under)} stays champion"
    _record(store, {**_base_row(state, verdict, action, reason), **_evidence(decisions, counts)})
    close_split(store, "withdrawn" if verdict in ("withdraw", "inconclusive") else "ended", state, state.last)
    return Outcome(verdict, decisions, action, reason)


def step(tracking: MlflowTracking, store: Storage, config: CanaryConfig, events_dir: str | Path) -> Outcome | None:
    """One look at the open canary or holdout and the action on it; None when none is open."""
    state = read_state(store)
    if state is None:
        return None
    tally = Tally.from_json(state.tally)
    window = pd.Timedelta(minutes=config.attribution_minutes)
    tally.advance(events_dir, _utc(state.started_at), window)
    state.tally = tally.to_json()
    verdict, decisions, counts = look(state, config, tally.counts(), tally.design_effects())
    return apply(tracking, store, config, state, verdict, decisions, counts)
