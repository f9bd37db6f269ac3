"""The canary gate's running counts: lists served, clicked and converted per API arm and model version, brought
up to date at each look from the lines appended to the API's event-log segments since the previous one.

The definition is `contract.attribution.served_lists` over every segment row timestamped at or after the
canary's start (`lib/canary.lists_since` reads it whole). A look here reads only what each segment gained since
the last look (a byte offset per segment, as `live_windows.scan` keeps) and adds it to the counts. A list is
counted once, in its arm, when its first impression is read; a click or a conversion naming it sets its flag
once, in whichever later look it is read. That needs, per list, its arm and flags (`open`), and feedback read
before the impressions of its list (`early`: each API worker flushes its impressions every half second, and
another worker may have written the click already).

Those records are kept for `window` after the list was served (after the click, for early feedback; up to one
`BUCKET` more), measured by the newest impression read, then forgotten; so the state grows with the lists served
in `window`, not with the lists since the start. Within the window the counts equal the full read's; a click
or a conversion read later than `window` after its list is not counted (the full read would count it).

Per user, the lists and the clicked and converted ones, for the design effect of each arm's rates
(`design_effects`): the arms are split by user, so a user's lists are not independent draws, and the variance of
an arm's list CTR is the delta-method (cluster-robust) one over users, not the Bernoulli one over lists. They are
kept for a sample of users, the same on every look: a user is in it when a hash of their id, read as a number in
[0, 1), is below `rate`; `rate` starts at 1 and halves (dropping the users above it) whenever more than
`MAX_USERS` are kept, so the state stays bounded and every kept user's counts are whole since the start.

The state is plain JSON (`to_json`, kept in `artifacts/CANARY.json` by the gate, so a restarted sensor goes
on where it stopped): the offsets, the counts per arm, the newest impression's time, and the records in buckets
of `BUCKET` by serving time, each bucket one string of `<recommendation_id>:<code>` separated by spaces (a
code: the arm's index in `counts` times 4, plus 1 if clicked, plus 2 if converted; early feedback: the flags);
the sampled users' counts per arm, the sample's `rate`, and which sampled user each remembered list was served
to (`who`, in the same buckets).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from recsys_assets.contract import attribution
from recsys_assets.contract.events import IMPRESSION
from recsys_assets.lib import live_windows as live

BUCKET = pd.Timedelta(minutes=10)
CLICKED, CONVERTED = 1, 2
# (API arm, model version) -> (lists, clicked lists, converted lists)
ListCounts = dict[tuple[str, str], tuple[int, int, int]]
Records = dict[str, dict[str, int]]  # bucket -> recommendation id -> code
# (API arm, model version) -> the design effects of its (list CTR, conversion per list)
DesignEffects = dict[tuple[str, str], tuple[float, float]]
MAX_USERS = 20_000  # users whose counts are kept for the design effect, over every arm


def user_unit(user: str) -> float:
    """A user's place in [0, 1) for the sample: the same on every machine and run (not Python's salted hash)."""
    return int.from_bytes(hashlib.blake2b(user.encode(), digest_size=8).digest(), "big") / 2.0**64


def design_effect(lists: np.ndarray, hits: np.ndarray) -> float:
    """The variance of an arm's rate sum(hits) / sum(lists) over users (each user's lists and lists with a hit)
    taken as the cluster-robust (delta-method) one, over the Bernoulli one of independent lists: Kish's design
    effect (Deng, Knoblich and Lu, "Applying the Delta Method in Metric Analytics", KDD 2018). 1 when it cannot
    be told (fewer than two users, or no hit or no miss)."""
    users, n = len(lists), float(np.sum(lists))
    if users < 2 or n <= 0:
        return 1.0
    rate = float(np.sum(hits)) / n
    bernoulli = rate * (1.0 - rate) / n
    if bernoulli <= 0:
        return 1.0
    clustered = users / (users - 1) * float(np.sum((hits - rate * lists) ** 2)) / (n * n)
    return clustered / bernoulli


def design_effects_of(lists: pd.DataFrame) -> DesignEffects:
    """The design effects of served lists (`attribution.served_lists`), read whole, over every user."""
    out: DesignEffects = {}
    for (arm, version), group in lists.groupby(["arm", "model_version"]):
        per_user = group.groupby("user_id").agg(
            lists=("clicked", "size"), clicked=("clicked", "sum"), converted=("converted", "sum")
        )
        n = per_user["lists"].to_numpy(np.float64)
        out[(str(arm), str(version))] = (
            design_effect(n, per_user["clicked"].to_numpy(np.float64)),
            design_effect(n, per_user["converted"].to_numpy(np.float64)),
        )
    return out


def counts_of(lists: pd.DataFrame) -> ListCounts:
    """The counts of served lists (`attribution.served_lists`), read whole."""
    if lists.empty:
        return {}
    table = lists.groupby(["arm", "model_version"]).agg(
        lists=("clicked", "size"), clicked=("clicked", "sum"), converted=("converted", "sum")
    )
    return {
        (str(r.Index[0]), str(r.Index[1])): (int(r.lists), int(r.clicked), int(r.converted)) for r in table.itertuples()
    }


def _buckets(times: pd.Series) -> pd.Series:
    if times.empty:  # no rows: perhaps not typed as times
        return pd.Series([], dtype="string")
    return times.dt.floor(BUCKET).dt.strftime(live.KEY_FORMAT)


def _decode(buckets: dict[str, str]) -> Records:
    return {
        b: {rid: int(code) for rid, _, code in (p.rpartition(":") for p in text.split())} for b, text in buckets.items()
    }


def _encode(records: Records) -> dict[str, str]:
    return {b: " ".join(f"{rid}:{code}" for rid, code in ids.items()) for b, ids in sorted(records.items()) if ids}


@dataclass
class Tally:
    """How far each segment has been read, the counts so far, and the records that let a later look attribute
    feedback to a list read earlier (module docstring)."""

    files: dict[str, int] = field(default_factory=dict)  # segment name -> bytes read
    arms: list[list[Any]] = field(default_factory=list)  # [arm, model version, lists, clicked, converted]
    newest: pd.Timestamp | None = None  # the newest impression read
    open: Records = field(default_factory=dict)
    early: Records = field(default_factory=dict)
    users: dict[int, dict[str, list[int]]] = field(default_factory=dict)  # arm index -> user -> counts
    rate: float = 1.0  # the user sample's threshold
    who: dict[str, dict[str, str]] = field(default_factory=dict)  # bucket -> recommendation id -> sampled user

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Tally:
        data = data or {}
        arms = [
            [c["arm"], c["model_version"], c["lists"], c["clicked"], c["converted"]] for c in data.get("counts", [])
        ]
        newest = pd.Timestamp(data["newest"]) if data.get("newest") else None
        users = {
            int(index): {u: list(c) for u, c in by_user.items()} for index, by_user in data.get("users", {}).items()
        }
        return cls(
            dict(data.get("files", {})),
            arms,
            newest,
            _decode(data.get("open", {})),
            _decode(data.get("early", {})),
            users,
            float(data.get("rate", 1.0)),
            {b: dict(ids) for b, ids in data.get("who", {}).items()},
        )

    def to_json(self) -> dict[str, Any]:
        keys = ("arm", "model_version", "lists", "clicked", "converted")
        return {
            "files": dict(sorted(self.files.items())),
            "counts": [dict(zip(keys, arm, strict=True)) for arm in self.arms],
            "newest": self.newest.isoformat() if self.newest is not None else None,
            "open": _encode(self.open),
            "early": _encode(self.early),
            "users": {str(index): by_user for index, by_user in sorted(self.users.items())},
            "rate": self.rate,
            "who": {b: ids for b, ids in sorted(self.who.items()) if ids},
        }

    def summary(self) -> dict[str, Any]:
        """The state without its records (what an operator reads): the counts and how much is remembered."""
        doc = self.to_json()
        del doc["open"], doc["early"], doc["users"], doc["who"]
        remembered = {
            "open_lists": sum(map(len, self.open.values())),
            "early_feedback": sum(map(len, self.early.values())),
            "sampled_users": sum(map(len, self.users.values())),
            "design_effects": [
                {"arm": arm, "model_version": version, "ctr": round(ctr, 3), "conversion": round(conv, 3)}
                for (arm, version), (ctr, conv) in self.design_effects().items()
            ],
        }
        return {**doc, **remembered}

    def counts(self) -> ListCounts:
        return {(arm, version): (lists, clicked, converted) for arm, version, lists, clicked, converted in self.arms}

    def design_effects(self) -> DesignEffects:
        """Each arm's design effects (`design_effect`) over the sampled users."""
        out: DesignEffects = {}
        for index, (arm, version, *_) in enumerate(self.arms):
            table = np.asarray(list(self.users.get(index, {}).values()), np.float64).reshape(-1, 3)
            out[(arm, version)] = (design_effect(table[:, 0], table[:, 1]), design_effect(table[:, 0], table[:, 2]))
        return out

    def advance(self, directory: str | os.PathLike[str], since: pd.Timestamp, window: pd.Timedelta) -> None:
        """Read the lines appended to the segments since the last look (a segment last written before `since` is
        not read, as in the full read), add the rows timestamped at or after `since`, and forget the records
        older than `window`."""
        frames = []
        for path in live.segments(directory):
            offset, stat = self.files.get(path.name), path.stat()
            if (offset is None and stat.st_mtime < since.timestamp()) or stat.st_size <= (offset or 0):
                continue
            rows, self.files[path.name] = live.read_appended(path, offset or 0)
            if len(rows):
                frames.append(rows.astype("string"))
        if frames:
            events = attribution.prepare_events(pd.concat(frames, ignore_index=True))
            self._add(events[events["timestamp"] >= since])
        self._forget(window)

    def _add(self, events: pd.DataFrame) -> None:
        lists = attribution.served_lists(events)
        if len(lists):
            served = pd.Timestamp(lists["served_at"].max())
            self.newest = served if self.newest is None else max(self.newest, served)
        for rid, bucket, arm, version, user in zip(
            lists["recommendation_id"],
            _buckets(lists["served_at"]),
            lists["arm"],
            lists["model_version"],
            lists["user_id"].astype(str),
            strict=True,
        ):
            if self._find(rid) is not None:
                continue  # its impressions were split between two looks: counted at the first
            index = self._arm_index(str(arm), str(version))
            self.arms[index][2] += 1
            self.open.setdefault(bucket, {})[rid] = index << 2
            if user_unit(user) < self.rate:
                self.users.setdefault(index, {}).setdefault(user, [0, 0, 0])[0] += 1
                self.who.setdefault(bucket, {})[rid] = user
            flags = self._take_early(rid)
            if flags:
                self._flag(rid, flags)
        feedback = events[(events["event_type"] != IMPRESSION) & events["recommendation_id"].notna()]
        per_list = (
            feedback.assign(
                clicked=feedback["event_type"] == attribution.CLICK, converted=attribution.converts(feedback)
            )
            .groupby("recommendation_id", sort=False)
            .agg(clicked=("clicked", "any"), converted=("converted", "any"), at=("timestamp", "min"))
        )
        per_list = per_list[per_list["clicked"] | per_list["converted"]]
        for rid, clicked, converted, bucket in zip(
            per_list.index, per_list["clicked"], per_list["converted"], _buckets(per_list["at"]), strict=True
        ):
            bits = CLICKED * bool(clicked) | CONVERTED * bool(converted)
            if not self._flag(str(rid), bits):  # its list is not read yet (or was served before the start)
                early = self.early.setdefault(bucket, {})
                early[str(rid)] = early.get(str(rid), 0) | bits
        while sum(map(len, self.users.values())) > MAX_USERS:
            self._thin()

    def _thin(self) -> None:
        """Halve the user sample: drop the users (and their remembered lists) above the new threshold."""
        self.rate /= 2.0
        for by_user in self.users.values():
            for user in [u for u in by_user if user_unit(u) >= self.rate]:
                del by_user[user]
        for ids in self.who.values():
            for rid in [r for r, u in ids.items() if user_unit(u) >= self.rate]:
                del ids[rid]

    def _arm_index(self, arm: str, version: str) -> int:
        for index, (a, v, *_) in enumerate(self.arms):
            if (a, v) == (arm, version):
                return index
        self.arms.append([arm, version, 0, 0, 0])
        return len(self.arms) - 1

    def _find(self, rid: str) -> str | None:
        """The bucket holding list `rid`, or None when it is not (or no longer) remembered."""
        return next((b for b, ids in self.open.items() if rid in ids), None)

    def _flag(self, rid: str, bits: int) -> bool:
        """Set `bits` on list `rid`, counting each flag the first time; False when the list is not remembered."""
        bucket = self._find(rid)
        if bucket is None:
            return False
        code = self.open[bucket][rid]
        arm = self.arms[code >> 2]
        user = self.who.get(bucket, {}).get(rid)  # None: the user is not in the sample
        for bit, column in ((CLICKED, 3), (CONVERTED, 4)):
            if bits & bit and not code & bit:
                arm[column] += 1
                if user is not None:
                    self.users[code >> 2][user][column - 2] += 1
        self.open[bucket][rid] = code | bits
        return True

    def _take_early(self, rid: str) -> int:
        flags = 0
        for ids in self.early.values():
            flags |= ids.pop(rid, 0)
        return flags

    def _forget(self, window: pd.Timedelta) -> None:
        if self.newest is None:
            return
        cutoff = self.newest - window - BUCKET
        for records in (self.open, self.early, self.who):
            for bucket in [b for b in records if live.window_bounds(b, 0)[0] <= cutoff]:
                del records[bucket]
