"""The targets the report compares the measured numbers with, and where each was set.

These are goals, not results: the project plan's (p95 < 100 ms, 99.9% availability, pipeline success
above 95%), the promotion check's floor (the champion must beat the popularity baseline offline), and
the replay's online goal (champion CTR at least twice the popularity arm's, issue 7). The alert rules
in `infra/monitoring/alerts.yml` fire on the same thresholds.
"""

from __future__ import annotations

# the API: p95 latency of recommendation traffic, and the share of requests answered without a 5xx
P95_LATENCY_MS = 100.0
AVAILABILITY = 0.999
# share of successful pipeline runs over the last 7 days (alert RecsysPipelineSuccessLow)
PIPELINE_SUCCESS = 0.95
PIPELINE_WINDOW_DAYS = 7
# the champion's list CTR over the popularity (or other) arm's in the same traffic
CTR_RATIO = 2.0
# offline metrics at this cutoff, temporal protocol, all test users; target: above the popularity baseline
K = 10
OFFLINE_METRICS: tuple[tuple[str, str], ...] = (
    ("precision", "Precision@10"),
    ("recall", "Recall@10"),
    ("ndcg", "NDCG@10"),
    ("map", "MAP@10"),
)
BASELINE_MODELS: tuple[str, ...] = ("Popularity", "Pop")
