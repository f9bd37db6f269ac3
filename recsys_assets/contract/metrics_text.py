"""The API's p95 latency and availability from its Prometheus text exposition (`/metrics`): one reading for
the console's Overview and the stakeholder report (`tools/report`)."""

from __future__ import annotations

import math
import re

_SAMPLE = re.compile(r"^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Samples of a Prometheus text exposition: (name, labels, value); comments and bad lines skipped."""
    samples = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        try:
            value = float(m["value"])
        except ValueError:
            continue
        labels = {k: v.replace('\\"', '"').replace("\\\\", "\\") for k, v in _LABEL.findall(m["labels"] or "")}
        samples.append((m["name"], labels, value))
    return samples


def histogram_quantile(q: float, buckets: dict[float, float]) -> float:
    """The q-quantile of a cumulative histogram (upper bound -> count), interpolated as Prometheus does."""
    bounds = sorted(buckets)
    if not bounds or not math.isinf(bounds[-1]):
        return math.nan
    total = buckets[bounds[-1]]
    if total <= 0:
        return math.nan
    rank = q * total
    lower, below = 0.0, 0.0
    for upper in bounds:
        count = buckets[upper]
        if count >= rank:
            if math.isinf(upper):
                # the quantile is beyond the last finite bucket: its bound is the best estimate
                return lower
            if count == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return math.nan


# Request-duration histograms, most specific first: the API exposes `recsys_api_request_duration_seconds`
# (Litestar's Prometheus middleware, `<app>_request_duration_seconds`); other names are fallbacks.
_LATENCY_NAMES = (re.compile(r"request_duration_seconds$"), re.compile(r"(duration|latency)_seconds$"))
_LATENCY_NAMES_MS = (re.compile(r"(duration|latency)_(ms|milliseconds)$"),)
# Paths that are not recommendation traffic.
_IGNORED_PATHS = {"/metrics", "/health", "/ready", "/healthz", "/livez", "/readyz"}


def latency_p95_ms(text: str, q: float = 0.95) -> tuple[float, int] | None:
    """p95 request latency in milliseconds and the number of requests behind it, from `/metrics` text.

    Buckets of every route but the probes (`/metrics`, health) are summed, since counters are
    cumulative since the API started, so is the quantile. None when no latency histogram is exposed.
    """
    families: dict[str, dict[float, float]] = {}
    for name, labels, value in parse_prometheus(text):
        if not name.endswith("_bucket") or "le" not in labels:
            continue
        path = labels.get("path") or labels.get("route") or labels.get("handler") or ""
        if path in _IGNORED_PATHS:
            continue
        bound = float(labels["le"].replace("Inf", "inf"))
        family = families.setdefault(name.removesuffix("_bucket"), {})
        family[bound] = family.get(bound, 0.0) + value
    for patterns, scale in ((_LATENCY_NAMES, 1000.0), (_LATENCY_NAMES_MS, 1.0)):
        for pattern in patterns:
            for family_name, buckets in sorted(families.items()):
                if pattern.search(family_name):
                    n = int(buckets.get(math.inf, 0))
                    value = histogram_quantile(q, buckets)
                    return (value * scale if not math.isnan(value) else math.nan), n
    return None


def availability(text: str) -> tuple[float, int] | None:
    """Share of requests answered without a 5xx and how many requests, from `/metrics` text: the
    request counters per status code, every route but the probes, cumulative since the API started
    (a 503 while no model is loaded counts as unavailable). None when no counter has a status code."""
    total = failed = 0.0
    found = False
    for name, labels, value in parse_prometheus(text):
        status = labels.get("status_code") or labels.get("status") or labels.get("code")
        if not name.endswith("_count") or status is None:
            continue
        if not any(p.search(name.removesuffix("_count")) for p in _LATENCY_NAMES + _LATENCY_NAMES_MS):
            continue
        if (labels.get("path") or labels.get("route") or labels.get("handler") or "") in _IGNORED_PATHS:
            continue
        found = True
        total += value
        failed += value if status.startswith("5") else 0.0
    if not found:
        return None
    return (1.0 - failed / total if total else math.nan), int(total)
