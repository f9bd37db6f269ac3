"""The load generator's commands: `latency`, `ramp`, `ingest`, `soak`, `scale` and `all`."""

from __future__ import annotations

import asyncio
import collections
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from recsys_assets.tools.loadgen import faults
from recsys_assets.tools.loadgen.champion import count_logged, in_process_p50
from recsys_assets.tools.loadgen.context import Context, measure
from recsys_assets.tools.loadgen.openloop import latency_stats, open_loop, run_async
from recsys_assets.tools.loadgen.stack import CpuMeter, Stack, await_quiet, cache_hit_ratio, progress, rss_bytes
from recsys_assets.tools.loadgen.workload import ENCODER, SERVED, Workload
from recsys_assets.tools.loadgen.wrk import run_wrk


def cmd_latency(ctx: Context) -> dict[str, Any]:
    a = ctx.args
    with ctx.stack() as st:
        result, run = measure(ctx, st, a.rate, a.duration, a.warmup)
        users = [s.user for s in run.measured() if s.user is not None][: a.inprocess_users]
    inproc = in_process_p50(ctx.model, users, a.k)
    get_p50 = result["get_recommendations"]["p50_ms"]
    result["in_process"] = inproc | {
        "api_get_p50_over_topk_one_p50": round(get_p50 / inproc["topk_one_p50_ms"], 1),
        "api_get_p50_over_recommend_p50": round(get_p50 / inproc["recommend_p50_ms"], 1),
    }
    result["goal"] = _goal(result, a.goal_p95_ms, a.goal_p99_ms)
    return result


def _goal(result: dict[str, Any], p95: float, p99: float) -> dict[str, Any]:
    return {
        "p95_ms_max": p95,
        "p99_ms_max": p99,
        "met": bool(result["errors"] == 0 and result["p95_ms"] <= p95 and result["p99_ms"] <= p99),
    }


def cmd_ramp(ctx: Context) -> dict[str, Any]:
    a = ctx.args
    steps: list[dict[str, Any]] = []
    with ctx.stack() as st:
        for n, rate in enumerate(a.rates):
            # the first step warms the cache and the connections for all later steps
            step, _ = measure(ctx, st, rate, a.step_duration, a.warmup if n == 0 else a.step_warmup)
            steps.append(step)
            progress(f"ramp {rate}/s: p95 {step['p95_ms']} ms, {step['errors']} errors")
            if step["p95_ms"] >= a.max_p95_ms or step["errors"]:
                break
        sustained = [s["offered_rps"] for s in steps if s["p95_ms"] < a.max_p95_ms and not s["errors"]]
        wrk = run_wrk(ctx, st) if not a.no_wrk else None
    return {
        "max_p95_ms": a.max_p95_ms,
        "highest_sustained_rps": max(sustained) if sustained else None,
        "steps": steps,
        "wrk": wrk,
    }


def cmd_ingest(ctx: Context) -> dict[str, Any]:
    a = ctx.args
    runs = []
    with ctx.stack() as st:
        for batch in a.batch_sizes:
            await_quiet(a.quiet_wait, a.quiet_below)
            meter, rss0 = CpuMeter(st), sum(rss_bytes(st.server_processes()).values())
            runs.append(
                run_async(
                    _ingest(st, ctx.workload(), batch, a.clients, a.ingest_duration, a.timeout, a.connection_per_batch)
                )
            )
            # what the workers keep per accepted event (their in-process live state, for Redis outages)
            rss_growth = sum(rss_bytes(st.server_processes()).values()) - rss0
            runs[-1] |= meter.read() | {"api_rss_growth_mb": round(rss_growth / 2**20, 1)}
            progress(f"ingest batch {batch}: {runs[-1]['acknowledged_events_per_s']} events/s")
        if st.external_url is None:
            for run in runs:
                rows, distinct = count_logged(st.events_dir, run.pop("prefix"))
                run |= {"rows_in_segments": rows, "distinct_ids_in_segments": distinct}
                run["all_acknowledged_stored_once"] = rows == distinct == run["acknowledged_events"]
    return {"goal_events_per_s": a.goal_events_per_s, "runs": runs}


async def _ingest(
    st: Stack, wl: Workload, batch: int, clients: int, duration: float, timeout: float, reconnect: bool = False
) -> dict[str, Any]:
    """`clients` clients posting batches back to back for `duration` seconds (closed loop), each on
    one kept-alive connection, or with `reconnect` on a new connection per batch.

    A worker accepts every connection waiting when it wakes, so a few connections opened together
    usually land on one worker; new connections go to whichever worker is free.
    """
    import aiohttp

    prefix = f"ing-{wl.tag}-{batch}"
    acked, failed, latencies = 0, collections.Counter(), []
    # requests answered by each worker (the API's X-Worker-Pid header): how the connections spread
    workers: collections.Counter[str] = collections.Counter()
    headers = {"X-API-Key": wl.api_key, "Content-Type": "application/json"}
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + duration

    async def client(c: int, session: aiohttp.ClientSession) -> None:
        nonlocal acked
        n = 0
        while loop.time() < stop_at:
            body = wl.event_batch(batch, f"{prefix}-{c}-{n}")
            n += 1
            t0 = time.perf_counter()
            try:
                async with session.post("/v1/events", data=body, headers=headers) as resp:
                    answer = await resp.read()
                    workers[resp.headers.get("X-Worker-Pid", "?")] += 1
                if resp.status == 202:
                    acked += json.loads(answer)["accepted"]
                    latencies.append(time.perf_counter() - t0)
                else:
                    failed[f"HTTP {resp.status}"] += 1
            except (TimeoutError, aiohttp.ClientError) as exc:
                failed[type(exc).__name__] += 1

    t0 = loop.time()
    timeout_cfg = aiohttp.ClientTimeout(total=timeout)
    connector = aiohttp.TCPConnector(force_close=reconnect)
    async with aiohttp.ClientSession(st.url, timeout=timeout_cfg, connector=connector) as session:
        await asyncio.gather(*(client(c, session) for c in range(clients)))
    wall = loop.time() - t0
    return {
        "batch": batch,
        "clients": clients,
        "connection_per_batch": reconnect,
        "duration_s": round(wall, 1),
        "acknowledged_events": acked,
        "acknowledged_events_per_s": round(acked / wall),
        "failed_requests": sum(failed.values()),
        "failure_kinds": dict(failed),
        "batch_latency": latency_stats(latencies),
        "requests_per_worker": sorted(workers.values(), reverse=True),
        "prefix": prefix,
    }


def cmd_soak(ctx: Context) -> dict[str, Any]:
    a = ctx.args
    series: list[dict[str, Any]] = []
    with ctx.stack() as st:
        last = [-1e9]

        def sample(elapsed: float) -> None:
            if elapsed - last[0] < a.sample_every:
                return
            last[0] = elapsed
            rss = rss_bytes(st.server_processes())
            series.append(
                {
                    "t_s": round(elapsed, 1),
                    "api_rss_mb": round(sum(rss.values()) / 2**20, 1),
                    "per_process_mb": {str(pid): round(v / 2**20, 1) for pid, v in rss.items()},
                    "redis_rss_mb": round(sum(rss_bytes(st.redis_processes()).values()) / 2**20, 1),
                }
            )
            if len(series) % max(1, int(60 / a.sample_every)) == 0:
                progress(f"soak {elapsed:.0f}s: API RSS {series[-1]['api_rss_mb']} MB")

        meter = CpuMeter(st)
        runner = faults.FaultRunner(st, faults.schedule(a.faults, a.warmup, a.duration), a.redis_down)
        prober = faults.Prober(st.url, metrics_at=a.warmup)
        runner.start()
        prober.start()
        try:
            load = open_loop(st.url, ctx.workload(), a.rate, a.duration, a.warmup, a.timeout, a.connections, sample)
            run = run_async(load)
        finally:
            runner.join()
            prober.join()
        sample(a.warmup + a.duration + a.sample_every)  # one last sample after the load
        result = run.summary() | meter.read() | {"cache_hit_ratio": cache_hit_ratio(st.url)}
        metrics_end = faults.metrics_counts(st.url)
        result["availability"] = faults.availability(
            run.measured(), runner.log, prober.results, prober.metrics, metrics_end, a.warmup, a.duration
        )
    after = [s for s in series if s["t_s"] >= a.warmup]
    if after:
        base, end = after[0]["api_rss_mb"], after[-1]["api_rss_mb"]
        peak = max(s["api_rss_mb"] for s in after)
        growth = (end - base) / base * 100
        per_pid = {
            pid: round((after[-1]["per_process_mb"].get(pid, mb) - mb) / mb * 100, 2)
            for pid, mb in after[0]["per_process_mb"].items()
        }
        result["memory"] = {
            "rss_mb_after_warmup": base,
            "rss_mb_end": end,
            "rss_mb_peak": peak,
            "growth_pct": round(growth, 2),
            "growth_pct_per_process": per_pid,
            "redis_rss_mb": [after[0]["redis_rss_mb"], after[-1]["redis_rss_mb"]],
            "goal_growth_pct_max": a.max_growth_pct,
            # with faults, errors are the availability goal's; a replaced worker starts small again
            "met": bool(growth < a.max_growth_pct and (a.faults or result["errors"] == 0)),
        }
    result["per_minute"] = run.per_interval(60.0)
    result["rss_series"] = [{k: v for k, v in s.items() if k != "per_process_mb"} for s in series]
    return result


def cmd_scale(ctx: Context) -> dict[str, Any]:
    a = ctx.args
    if a.url:
        raise SystemExit("scale starts its own servers; it does not take --url")
    rows = []
    for workers in a.worker_counts:
        with ctx.stack(workers=workers) as st:
            fixed, _ = measure(ctx, st, a.scale_rate, a.step_duration, a.warmup)
            wrk = run_wrk(ctx, st) if not a.no_wrk else None
        rows.append({"workers": workers, "fixed_rate": fixed, "wrk": wrk})
        progress(f"scale {workers} worker(s): p95 {fixed['p95_ms']} ms, wrk {wrk and wrk['requests_per_s']}/s")
    with ctx.stack(workers=max(2, a.workers), instances=2) as st:
        across = run_async(_reflection(st.apis[0].url, st.apis[1].url, a.reflect_trials, ctx.args.api_key))
        within = run_async(_reflection(st.apis[0].url, st.apis[0].url, a.reflect_trials, ctx.args.api_key))
    return {
        "rate_rps": a.scale_rate,
        "rows": rows,
        "event_reflected": {"other_process": across, "same_port_new_connections": within},
    }


async def _reflection(post_url: str, get_url: str, trials: int, api_key: str) -> dict[str, Any]:
    """A new user clicks the top item of their cold-start list on `post_url`; the next list from
    `get_url` (a new connection each time, so any worker may answer) must leave that item out."""
    import aiohttp

    reflected, elapsed = 0, []
    headers = {"X-API-Key": api_key, "Content-Type": "application/json"}
    tag = uuid.uuid4().hex[:8]
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as session:
        for n in range(trials):
            user = f"bench-reflect-{tag}-{n}"
            async with session.get(f"{get_url}/v1/users/{user}/recommendations?k=10") as resp:
                first = SERVED.decode(await resp.read()).items[0].item_id
            event = {"user_id": user, "item_id": first, "event_type": "click", "event_id": f"{user}-1"}
            async with session.post(f"{post_url}/v1/events", data=ENCODER.encode(event), headers=headers) as resp:
                await resp.read()
                assert resp.status == 202, resp.status
            t0 = time.perf_counter()
            async with session.get(f"{get_url}/v1/users/{user}/recommendations?k=10") as resp:
                after = SERVED.decode(await resp.read())
            elapsed.append(time.perf_counter() - t0)
            reflected += all(it.item_id != first for it in after.items)
    return {"trials": trials, "reflected_on_next_request": reflected, "next_request": latency_stats(elapsed)}


def cmd_all(ctx: Context) -> dict[str, Any]:
    out = {}
    for name, fn in (("latency", cmd_latency), ("ramp", cmd_ramp), ("ingest", cmd_ingest), ("scale", cmd_scale)):
        progress(f"{name}...")
        out[name] = fn(ctx)
        if name == "ingest" and not ctx.args.connection_per_batch:
            # kept-alive connections opened together land on one worker; new ones spread
            ctx.args.connection_per_batch = True
            out["ingest_connection_per_batch"] = fn(ctx)
            ctx.args.connection_per_batch = False
    return out


COMMANDS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "latency": cmd_latency,
    "ramp": cmd_ramp,
    "ingest": cmd_ingest,
    "soak": cmd_soak,
    "scale": cmd_scale,
    "all": cmd_all,
}
