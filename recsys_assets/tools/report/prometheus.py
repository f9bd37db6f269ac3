"""The API's p95 latency and availability from its `/metrics` text, as the console computes them.

The console's versions (`console/kpis.py`) cannot be imported from `recsys_assets` (the console imports
the pipeline package's contract, never the other way); `tests/tools/test_report.py` checks that these
give the console's numbers on the same text.
"""

from __future__ import annotations

import math
import re

_SAMPLE = re.compile(r"^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')
# the API's request histogram (Litestar's Prometheus middleware, `recsys_api_request_duration_seconds`)
DURATION = re.compile(r"request_duration_seconds$")
# probes and the scrape itself are not client traffic
IGNORED_PATHS = frozenset({"/metrics", "/health", "/ready"})


def parse(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Samples of a Prometheus text exposition: (name, labels, value); comments and bad lines skipped."""
    samples = []
    for line in text.splitlines():
        line = line.strip()
        m = _SAMPLE.match(line) if line and not line.startswith("#") else None
        if m is None:
            continue
        try:
            value = float(m["value"])
        except ValueError:
            continue
        labels = {k: v.replace('\\"', '"').replace("\\\\", "\\") for k, v in _LABEL.findall(m["labels"] or "")}
        samples.append((m["name"], labels, value))
    return samples


def _path(labels: dict[str, str]) -> str:
    return labels.get("path") or labels.get("route") or labels.get("handler") or ""


def histogram_quantile(q: float, buckets: dict[float, float]) -> float:
    """The q-quantile of a cumulative histogram (upper bound -> count), interpolated as Prometheus does."""
    bounds = sorted(buckets)
    if not bounds or not math.isinf(bounds[-1]) or buckets[bounds[-1]] <= 0:
        return math.nan
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for upper in bounds:
        count = buckets[upper]
        if count >= rank:
            if math.isinf(upper):
                return lower  # beyond the last finite bucket: its bound is the best estimate
            if count == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return math.nan


def latency_p95_ms(text: str, q: float = 0.95) -> tuple[float, int] | None:
    """p95 latency (ms) of every route but the probes, cumulative since the API started, and the number of
    requests behind it; None when the text has no request histogram."""
    buckets: dict[float, float] = {}
    for name, labels, value in parse(text):
        histogram = name.endswith("_bucket") and "le" in labels and DURATION.search(name.removesuffix("_bucket"))
        if histogram and _path(labels) not in IGNORED_PATHS:
            bound = float(labels["le"].replace("Inf", "inf"))
            buckets[bound] = buckets.get(bound, 0.0) + value
    if not buckets:
        return None
    value = histogram_quantile(q, buckets)
    return value * 1000.0, int(buckets.get(math.inf, 0))


def availability(text: str) -> tuple[float, int] | None:
    """Share of requests answered without a 5xx (every route but the probes, since the API started) and how
    many requests; a 503 while no model is loaded counts as unavailable. None without per-status counters."""
    total = failed = 0.0
    found = False
    for name, labels, value in parse(text):
        status = labels.get("status_code") or labels.get("status") or labels.get("code")
        if status is None or not name.endswith("_count") or not DURATION.search(name.removesuffix("_count")):
            continue
        if _path(labels) in IGNORED_PATHS:
            continue
        found = True
        total += value
        failed += value if status.startswith("5") else 0.0
    if not found:
        return None
    return (1.0 - failed / total if total else math.nan), int(total)
