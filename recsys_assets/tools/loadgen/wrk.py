"""The closed-loop saturation cross-check: `wrk` with a Lua script of the same mix."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.parse
from typing import Any

from recsys_assets.tools.loadgen.context import Context
from recsys_assets.tools.loadgen.stack import CpuMeter, Stack, await_quiet

WRK_LUA = """-- the benchmark's mix for wrk, closed-loop: {get_pct}% GET recommendations, the rest POST /v1/events
local users = {{{users}}}
local items = {{{items}}}
local event_share = {event_share}
local counter = 0
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
function init(args)
  math.randomseed(1000 + tid)
end
function request()
  if math.random() < event_share then
    counter = counter + 1
    local body = string.format(
      '{{"user_id":"%s","item_id":"%s","event_type":"click","event_id":"wrk-{tag}-%d-%d"}}',
      users[math.random(#users)], items[math.random(#items)], tid, counter)
    return wrk.format("POST", "/v1/events",
      {{["Content-Type"] = "application/json", ["X-API-Key"] = "{key}"}}, body)
  end
  return wrk.format("GET", "/v1/users/" .. users[math.random(#users)] .. "/recommendations?k={k}")
end
"""


def unit_ms(value: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
    if not m:
        return float("nan")
    return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}[m.group(2)]


def run_wrk(ctx: Context, st: Stack) -> dict[str, Any] | None:
    """Closed-loop saturation cross-check: `wrk` with the same mix, for `--wrk-duration` seconds."""
    a = ctx.args
    if not shutil.which("wrk"):
        return {"skipped": "wrk not installed"}
    wl = ctx.workload()
    users = [*wl.user_ids, *(f"bench-new-{i}" for i in range(int(len(wl.user_ids) * a.unknown_share)))]
    script = ctx.work / f"mix-{wl.tag}.lua"
    script.write_text(
        WRK_LUA.format(
            get_pct=round(100 * (1 - a.event_share)),
            users=",".join(json.dumps(urllib.parse.quote(u, safe="")) for u in users),
            items=",".join(json.dumps(i) for i in wl.item_ids),
            event_share=a.event_share,
            tag=wl.tag,
            key=a.api_key,
            k=a.k,
        )
    )
    cmd = [
        "wrk",
        f"-t{a.wrk_threads}",
        f"-c{a.wrk_connections}",
        f"-d{a.wrk_duration}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(script),
        st.url,
    ]
    await_quiet(a.quiet_wait, a.quiet_below)
    meter = CpuMeter(st)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=a.wrk_duration + 60).stdout
    cpu = meter.read()
    cpu.pop("generator_cpu_cores", None)
    pct = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)$", out, re.M))
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    total = re.search(r"(\d+) requests in", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return {
        "command": " ".join([*cmd[:-3], "mix.lua", cmd[-1]]),
        "requests": int(total.group(1)) if total else None,
        "requests_per_s": float(rps.group(1)) if rps else None,
        **{f"p{q}_ms": round(unit_ms(v), 2) for q, v in pct.items()},
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(int(x) for x in socket_errors.groups()) if socket_errors else 0,
        **cpu,
    }
