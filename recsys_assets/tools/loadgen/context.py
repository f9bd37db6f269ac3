"""One command's run: its arguments, storage, work folder and model, and one measured open-loop run."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
from pathlib import Path
from typing import Any

from recsys_assets.tools.loadgen.openloop import LoadRun, open_loop, run_async
from recsys_assets.tools.loadgen.stack import CpuMeter, Stack, await_quiet, cache_hit_ratio, progress, stack
from recsys_assets.tools.loadgen.workload import Workload


@dataclasses.dataclass
class Context:
    args: argparse.Namespace
    storage: Path
    work: Path
    model: Any

    def workload(self, **kw: Any) -> Workload:
        a = self.args
        return Workload(
            user_ids=self.model.artifact.user_ids.tolist(),
            item_ids=self.model.artifact.item_ids.tolist(),
            api_key=a.api_key,
            event_share=a.event_share,
            unknown_share=a.unknown_share,
            k=a.k,
            seed=a.seed,
            **kw,
        )

    def stack(self, workers: int | None = None, **kw: Any) -> contextlib.AbstractContextManager[Stack]:
        a = self.args
        return stack(
            self.storage,
            self.work,
            workers=workers or a.workers,
            cache_ttl=a.cache_ttl,
            url=a.url,
            extra_env=dict(kv.split("=", 1) for kv in a.api_env),
            keep_events=a.keep_events,
            **kw,
        )


def measure(ctx: Context, st: Stack, rate: float, duration: float, warmup: float) -> tuple[dict[str, Any], LoadRun]:
    """One open-loop run with the CPU the server, Redis, the generator and the rest used during it.

    With `--quiet-wait`, a run during which other processes used `--quiet-below` cores or more is
    repeated (up to `--noisy-retries` times): it measured them as much as the API.
    """
    a = ctx.args
    for attempt in range(a.noisy_retries + 1):
        await_quiet(a.quiet_wait, a.quiet_below)
        meter = CpuMeter(st)
        run = run_async(open_loop(st.url, ctx.workload(), rate, duration, warmup, a.timeout, a.connections))
        out = run.summary() | meter.read() | {"noisy_retries": attempt}
        if not a.quiet_wait or out["other_cpu_cores"] < a.quiet_below or attempt == a.noisy_retries:
            break
        progress(f"{rate}/s: other processes used {out['other_cpu_cores']} cores; measuring again")
    out["cache_hit_ratio"] = cache_hit_ratio(st.url)
    return out, run
