"""The replay loop: users' real future activity, in time order, as live traffic against the running API.

Each *visit* (a user's consecutive real events, `data.build_visits`) is one
`GET /v1/users/{user_id}/recommendations?k=K`, then one `POST /v1/events` batch with the user's
reactions (`behaviour.react`: clicks and the real events they bring forward, with the list's
`recommendation_id`; the visit's other real events, organic). Users interleave: a few async workers
take visits in order of their real start time, a user's visits strictly one after another, so each
visit sees the live state its predecessors left. `speed` paces the replay in data seconds per wall
second (0: as fast as the workers go). It stops when every planned visit is done or after
`max_seconds` (visits in flight finish).

Event ids are `rp-<run_id>-<user>-<visit>-<n>`: a retried post is idempotent, and a second run never
collides with the first. Timestamps are the API's receipt time by default (the replay is live
traffic now: the live windows and drift reports see it as such); `timestamps="real"` posts the
events' real instants instead.

Drift hook: with `shift` and `shift_at`, from that fraction of the planned visits on only the
shifted stream is replayed (`data.apply_shift`), and the phase `during` is marked when its first
visit is dispatched. `phases.mark(name)` marks further phases from outside (e.g. `after`, once a
retrained champion serves); every list records the phase it was requested in (`ReplayResult.by_phase`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import heapq
import itertools
import logging
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import httpx
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from recsys_assets.tools.replay import report
from recsys_assets.tools.replay.behaviour import (
    TAOBAO_FUNNEL,
    Feedback,
    Funnel,
    Post,
    UserFuture,
    feedback_mode,
    hit,
    react,
)
from recsys_assets.tools.replay.data import Shift, Visit, apply_shift, build_visits, real_events
from recsys_assets.tools.replay.report import PhaseMark, ReplayResult

log = logging.getLogger(__name__)

MAX_BATCH = 1000  # the API's batch limit (serving.schemas.MAX_BATCH)
RETRIES = 4
# the API buffers impressions for half a second (serving.eventlog.FLUSH_SECONDS); wait past it
LOG_SETTLE_SECONDS = 1.5
PROGRESS_LINE_SECONDS = 10.0


class Phases:
    """The replay's phases: `before` from the start; `during` at the shift; any name marked from outside
    (thread-safe). `on_phase` is called with each new mark, in the thread that marks it."""

    def __init__(self, on_phase: Callable[[PhaseMark], None] | None = None) -> None:
        self.on_phase = on_phase
        self._lock = threading.Lock()
        self.marks: list[PhaseMark] = []

    @property
    def current(self) -> str:
        with self._lock:
            return self.marks[-1].name if self.marks else "before"

    def mark(self, name: str, data_ts: float | None = None) -> PhaseMark:
        mark = PhaseMark(name, time.time(), data_ts)
        with self._lock:
            self.marks.append(mark)
        if self.on_phase is not None:
            self.on_phase(mark)
        return mark


@dataclass(frozen=True)
class Progress:
    """A progress snapshot, given to `ReplayConfig.on_progress` after every visit."""

    visits_done: int
    visits_planned: int
    elapsed: float
    lists: dict[str, int]
    clicked: dict[str, int]

    def line(self) -> str:
        ctr = ", ".join(
            f"{arm} {self.clicked.get(arm, 0) / n:.1%} of {n}" for arm, n in sorted(self.lists.items()) if n
        )
        return f"replay: {self.visits_done}/{self.visits_planned} visits, {self.elapsed:.0f} s; list CTR {ctr or '-'}"


@dataclass
class ReplayConfig:
    """One replay. `events` is the held-out window (`data.read_events`: user_id, item_id, event_type,
    timestamp, value)."""

    api_url: str
    api_key: str
    events: pd.DataFrame
    dataset: str = "custom"
    k: int = 10
    # False: lists may repeat items the user already touched (repeat consumption, as in Taobao's
    # re-views); freshness is then only checked on cold-start lists (see `report`)
    exclude_seen: bool = True
    seed: int = 42
    max_users: int | None = None  # a seeded sample of the window's users
    max_visits: int | None = None  # the first N visits in time order (one list request each)
    max_seconds: float = 300.0
    speed: float = 0.0  # data seconds per wall second; 0: no pacing
    # the pace of the shifted stream (data seconds per wall second), when it differs: a thin shifted
    # stream can be stretched so that what follows the retrain is long enough to measure
    shift_speed: float | None = None
    concurrency: int = 4
    # a visit is one real event; with max_events_per_visit > 1, a user's events less than
    # visit_gap_seconds apart share one visit (one list) up to that many
    max_events_per_visit: int = 1
    visit_gap_seconds: float = 1800.0
    timestamps: Literal["now", "real"] = "now"
    feedback: Feedback | None = None  # default: `behaviour.feedback_mode` of the events
    funnel: Funnel = TAOBAO_FUNNEL
    # drift hook: the shifted stream from `shift_at` (fraction of planned visits) on
    shift: Shift | None = None
    shift_at: float | None = None
    past_users: frozenset[str] | None = None
    past_items: frozenset[str] | None = None
    phases: Phases = field(default_factory=Phases)
    on_progress: Callable[[Progress], None] | None = None
    # the API's event-log segments; when given, the result holds the log's own counts
    events_dir: str | Path | None = None
    request_timeout: float = 15.0
    progress: bool = True  # a progress bar on a terminal, else a line every 10 s (on stderr)
    run_id: str | None = None
    # tests only: answer requests in-process instead of over the network
    transport: httpx.AsyncBaseTransport | None = None

    def plan(self) -> tuple[list[Visit], float | None]:
        """The visits this replay will play, in time order, and the data time of the shift."""
        events = real_events(self.events)
        users = sorted({e.user_id for e in events})
        if self.max_users is not None and self.max_users < len(users):
            rng = np.random.default_rng(self.seed)
            keep = set(rng.choice(np.array(users, dtype=object), size=self.max_users, replace=False).tolist())
            events = [e for e in events if e.user_id in keep]
        visits = build_visits(events, self.visit_gap_seconds, self.max_events_per_visit)
        shift_ts = None
        if self.shift is not None:
            if self.shift_at is None:
                raise ValueError("a shift needs shift_at (the fraction of the replay where it starts)")
            if self.past_users is None or self.past_items is None:
                raise ValueError("a shift needs past_users and past_items (what the past-trained model knows)")
            visits, shift_ts = apply_shift(
                visits, self.shift, self.shift_at, set(self.past_users), set(self.past_items)
            )
        if self.max_visits is not None:
            visits = visits[: self.max_visits]
        return visits, shift_ts


@dataclass
class _Pending:
    """A clicked item waiting for the user's next list to reflect it."""

    item_id: str
    arm: str
    acked_at: float
    was_cold: bool
    lists_since: int = 0


class _Replay:
    def __init__(self, config: ReplayConfig) -> None:
        self.cfg = config
        self.run_id = config.run_id or f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
        self.visits, self.shift_ts = config.plan()
        self.mode: Feedback = config.feedback or feedback_mode(str(t) for t in config.events["event_type"].unique())
        self.queue: dict[str, collections.deque[Visit]] = {}
        events_of: dict[str, list] = {}
        for v in self.visits:
            self.queue.setdefault(v.user_id, collections.deque()).append(v)
            events_of.setdefault(v.user_id, []).extend(v.events)
        # the user's real future is what will be replayed of them (after sampling and the shift)
        self.futures = {u: UserFuture(evs) for u, evs in events_of.items()}
        self.pending: dict[str, list[_Pending]] = {}
        self.lists: list[dict[str, Any]] = []
        self.freshness: list[dict[str, Any]] = []
        self.errors: collections.Counter[str] = collections.Counter()
        self.events_posted = 0
        self.done = 0
        self.arm_lists: collections.Counter[str] = collections.Counter()
        self.arm_clicked: collections.Counter[str] = collections.Counter()
        self.shift_marked = False

    # -- HTTP -----------------------------------------------------------------------------------

    async def _request(self, client: httpx.AsyncClient, method: str, url: str, ok: int, **kw: Any) -> Any:
        what = "list" if method == "GET" else "events"
        for attempt in range(RETRIES):
            try:
                r = await client.request(method, url, **kw)
            except httpx.TransportError as exc:
                self.errors[f"{what}: {type(exc).__name__}"] += 1
                await asyncio.sleep(0.2 * 2**attempt)
                continue
            if r.status_code == ok:
                return r.json()
            self.errors[f"{what}: HTTP {r.status_code}"] += 1
            if r.status_code not in (429, 503):
                log.warning("%s %s: HTTP %s %s", method, url, r.status_code, r.text[:300])
                return None
            retry_after = r.headers.get("retry-after", "")
            await asyncio.sleep(float(retry_after) if retry_after.isdigit() else 0.2 * 2**attempt)
        return None

    def _event(self, v: Visit, n: int, post: Post) -> dict[str, Any]:
        body: dict[str, Any] = {
            "user_id": v.user_id,
            "item_id": post.item_id,
            "event_type": post.event_type,
            "event_id": f"rp-{self.run_id}-{v.user_id}-{v.index}-{n}",
        }
        if post.value is not None:
            body["value"] = post.value
        if post.recommendation_id is not None:
            body["recommendation_id"] = post.recommendation_id
        if self.cfg.timestamps == "real":
            body["timestamp"] = post.ts
        return body

    # -- one visit ------------------------------------------------------------------------------

    async def visit(self, client: httpx.AsyncClient, v: Visit) -> None:
        phase = self.cfg.phases.current
        requested = time.time()
        params = {"k": self.cfg.k, "exclude_seen": str(self.cfg.exclude_seen).lower()}
        path = f"/v1/users/{quote(v.user_id, safe='')}/recommendations"
        body = await self._request(client, "GET", path, 200, params=params)
        if body is None:
            return
        served_at = time.time()
        served = [it["item_id"] for it in body["items"]]
        arm, cold = body["arm"], bool(body["cold_start"])
        self._check_freshness(v.user_id, served, cold, served_at)

        future = self.futures[v.user_id]
        ahead = future.ahead(v.start)
        posts = react(v.events, served, body["recommendation_id"], future, self.mode, self.cfg.funnel, self.cfg.seed)
        payload = [self._event(v, n, p) for n, p in enumerate(posts)]
        acked = True
        for i in range(0, len(payload), MAX_BATCH):
            answer = await self._request(
                client,
                "POST",
                "/v1/events",
                202,
                json=payload[i : i + MAX_BATCH],
                headers={"X-API-Key": self.cfg.api_key},
            )
            acked = acked and answer is not None
        acked_at = time.time()
        # feedback the API refused is not in its log: the simulator does not count it either
        counted = posts if acked else []
        clicks = [p for p in counted if p.kind == "click"]
        self.lists.append(
            {
                "recommendation_id": body["recommendation_id"],
                "user_id": v.user_id,
                "visit": v.index,
                "arm": arm,
                "model_version": body["model_version"],
                "phase": phase,
                "shifted": v.shifted,
                "requested_at": requested,
                "served_at": served_at,
                "cold_start": cold,
                "items": served,
                "impressions": len(served),
                "clicks": len(clicks),
                "clicked": bool(clicks),
                "converted": any(p.converts and p.recommendation_id for p in counted),
                "hit": hit(served, ahead),
                "events_posted": len(counted),
            }
        )
        self.events_posted += len(counted)
        self.arm_lists[arm] += 1
        self.arm_clicked[arm] += bool(clicks)
        if self.cfg.exclude_seen or cold:
            self.pending.setdefault(v.user_id, []).extend(_Pending(p.item_id, arm, acked_at, cold) for p in clicks)

    def _check_freshness(self, user: str, served: list[str], cold: bool, served_at: float) -> None:
        waiting = self.pending.get(user, [])
        still = []
        shown = set(served)
        for p in waiting:
            p.lists_since += 1
            excluded = p.item_id not in shown or not self.cfg.exclude_seen
            if excluded and not (p.was_cold and cold):
                self.freshness.append(
                    {
                        "user_id": user,
                        "arm": p.arm,
                        "item_id": p.item_id,
                        "acked_at": p.acked_at,
                        "reflected_at": served_at,
                        "requests": p.lists_since,
                        "seconds": served_at - p.acked_at,
                    }
                )
            else:
                still.append(p)
        self.pending[user] = still

    # -- the loop -------------------------------------------------------------------------------

    async def run(self) -> ReplayResult:
        cfg = self.cfg
        started = time.time()
        deadline = started + cfg.max_seconds
        data_t0 = self.visits[0].start if self.visits else 0.0
        seq = itertools.count()
        heap = [(q[0].start, next(seq), user) for user, q in self.queue.items()]
        heapq.heapify(heap)
        running: set[asyncio.Task[None]] = set()
        wake = asyncio.Event()
        stopped_by = "exhausted"
        bar = tqdm(
            total=len(self.visits),
            desc="replay",
            unit="visit",
            disable=not (cfg.progress and sys.stderr.isatty()),
        )
        last_line = [started]

        def finished(task: asyncio.Task[None], user: str) -> None:
            running.discard(task)
            if not task.cancelled() and task.exception() is not None:
                self.errors[f"visit: {type(task.exception()).__name__}"] += 1
                log.warning("visit of user %s failed: %r", user, task.exception())
            self.done += 1
            if self.queue[user]:
                heapq.heappush(heap, (self.queue[user][0].start, next(seq), user))
            self._progress(bar, started, last_line)
            wake.set()

        limits = httpx.Limits(max_connections=cfg.concurrency + 2, max_keepalive_connections=cfg.concurrency + 2)
        async with httpx.AsyncClient(
            base_url=cfg.api_url, timeout=cfg.request_timeout, limits=limits, transport=cfg.transport
        ) as client:
            while True:
                now = time.time()
                if now >= deadline:
                    stopped_by = "max_seconds"
                    break
                delay: float | None = None
                if heap and len(running) < cfg.concurrency:
                    due = self._due(heap[0][0], started, data_t0) if cfg.speed > 0 else now
                    if due <= now:
                        _, _, user = heapq.heappop(heap)
                        v = self.queue[user].popleft()
                        if v.shifted and not self.shift_marked:
                            self.shift_marked = True
                            cfg.phases.mark("during", v.start)
                        task = asyncio.create_task(self.visit(client, v))
                        running.add(task)
                        task.add_done_callback(lambda t, u=user: finished(t, u))
                        continue
                    delay = due - now
                elif not heap and not running:
                    break
                wake.clear()
                timeout = min(delay if delay is not None else float("inf"), deadline - now)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout)
            if running:
                await asyncio.wait(set(running), timeout=cfg.request_timeout * (RETRIES + 1))
        bar.close()
        ended = time.time()
        return await self._result(started, ended, stopped_by)

    def _due(self, start: float, started: float, data_t0: float) -> float:
        """The wall time a visit starting at data time `start` is due."""
        speed, shift_ts, shift_speed = self.cfg.speed, self.shift_ts, self.cfg.shift_speed
        if shift_ts is None or not shift_speed or start < shift_ts:
            return started + (start - data_t0) / speed
        return started + (shift_ts - data_t0) / speed + (start - shift_ts) / shift_speed

    def _progress(self, bar: tqdm, started: float, last_line: list[float]) -> None:
        snap = Progress(
            self.done, len(self.visits), time.time() - started, dict(self.arm_lists), dict(self.arm_clicked)
        )
        bar.update(1)
        if not bar.disable:
            bar.set_postfix_str(snap.line().split("; ", 1)[1], refresh=False)
        elif self.cfg.progress and time.time() - last_line[0] >= PROGRESS_LINE_SECONDS:
            last_line[0] = time.time()
            print(snap.line(), file=sys.stderr, flush=True)
        if self.cfg.on_progress is not None:
            self.cfg.on_progress(snap)

    async def _result(self, started: float, ended: float, stopped_by: str) -> ReplayResult:
        # a clicked item the user had a later list for, never reflected in it: freshness failed
        for user, waiting in self.pending.items():
            self.freshness += [
                {
                    "user_id": user,
                    "arm": p.arm,
                    "item_id": p.item_id,
                    "acked_at": p.acked_at,
                    "reflected_at": np.nan,
                    "requests": np.nan,
                    "seconds": np.nan,
                }
                for p in waiting
                if p.lists_since > 0
            ]
        lists = pd.DataFrame(self.lists, columns=list(report.SIMULATOR_LIST_COLUMNS))
        log_lists = None
        if self.cfg.events_dir is not None:
            await asyncio.sleep(LOG_SETTLE_SECONDS)
            raw = await asyncio.to_thread(report.read_log, self.cfg.events_dir, started)
            log_lists = report.log_lists(raw, set(lists["recommendation_id"]))
        marks = [PhaseMark("before", started, self.visits[0].start if self.visits else None), *self.cfg.phases.marks]
        return ReplayResult(
            run_id=self.run_id,
            dataset=self.cfg.dataset,
            started_at=dt.datetime.fromtimestamp(started, dt.UTC),
            ended_at=dt.datetime.fromtimestamp(ended, dt.UTC),
            stopped_by=stopped_by,
            feedback=self.mode,
            visits_planned=len(self.visits),
            visits_done=self.done,
            events_posted=self.events_posted,
            lists=lists,
            freshness=pd.DataFrame(self.freshness, columns=list(report.FRESHNESS_COLUMNS)),
            log_lists=log_lists,
            phases=marks,
            shift=self.cfg.shift,
            shift_at=self.cfg.shift_at,
            errors=dict(self.errors),
            seed=self.cfg.seed,
            speed=self.cfg.speed,
        )


async def arun_replay(config: ReplayConfig) -> ReplayResult:
    """`run_replay` inside a running event loop."""
    return await _Replay(config).run()


def run_replay(config: ReplayConfig) -> ReplayResult:
    """Replay `config.events` through the API at `config.api_url` and measure it (see the module docstring)."""
    return asyncio.run(arun_replay(config))
