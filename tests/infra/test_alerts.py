"""Alerts as code, checked offline: the Prometheus rules and scrape configuration parse and cover every
alert the platform needs, and the Azure Monitor rule group in Bicep holds the same rules. That every
metric the rules read is exported by a running API is tests/serving/test_alert_metrics.py."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.alert_rules import RULES_FILE, SCRAPE_FILE, balanced, iso_duration, metric_names, rules
from tests.infra.test_infra import bicep

# what the platform must alert on (issue 18): API latency, 5xx, readiness, drift, retrain failed or
# refused, pipeline success over 7 days, champion age
REQUIRED = {
    "RecsysApiLatencyP95High": {"recsys_api_request_duration_seconds_bucket"},
    "RecsysApi5xxRateHigh": {"recsys_api_request_duration_seconds_count"},
    "RecsysApiNotReady": {"recsys_ready"},
    "RecsysApiDown": {"up"},
    "RecsysDriftFlagged": {"recsys_drift_flagged"},
    "RecsysRetrainFailed": {"recsys_retrain_last_outcome"},
    "RecsysRetrainRefused": {"recsys_retrain_last_outcome"},
    "RecsysPipelineSuccessLow": {"recsys_pipeline_success_ratio_7d"},
    "RecsysChampionStale": {"recsys_champion_created_timestamp_seconds"},
}


def test_rules_parse_and_cover_every_alert() -> None:
    found = rules()
    assert {r["alert"] for r in found} == set(REQUIRED)
    assert len(found) == len(REQUIRED)  # no alert twice
    for rule in found:
        assert set(rule) >= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["for"]
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"].strip()
        assert balanced(rule["expr"]), rule["expr"]
        assert metric_names(rule["expr"]) == REQUIRED[rule["alert"]], rule["alert"]
    # the thresholds the targets name
    by_name = {r["alert"]: r["expr"] for r in found}
    assert by_name["RecsysApiLatencyP95High"].endswith("> 0.1")  # 100 ms
    assert by_name["RecsysApi5xxRateHigh"].endswith("> 0.001")  # 99.9 %
    assert by_name["RecsysPipelineSuccessLow"].endswith("< 0.95")


def test_metric_names_ignore_functions_labels_and_ranges() -> None:
    expr = 'histogram_quantile(0.95, sum by (le) (rate(a_bucket{path!~"/x|y", code="5.."}[5m]))) > on(job) b'
    assert metric_names(expr) == {"a_bucket", "b"}
    assert metric_names("time() - min(c_seconds) > 14 * 86400") == {"c_seconds"}
    assert not balanced("sum(rate(a[5m])")


def test_scrape_config_reads_the_rules_and_the_api() -> None:
    doc = yaml.safe_load(SCRAPE_FILE.read_text())
    assert doc["rule_files"] == [RULES_FILE.name]
    (job,) = [j for j in doc["scrape_configs"] if j["job_name"] == "recsys-api"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["api:8000"]
    # the job name the readiness rule selects on
    assert 'job="recsys-api"' in {r["alert"]: r["expr"] for r in rules()}["RecsysApiDown"]


def test_azure_rule_group_holds_the_same_rules() -> None:
    doc = bicep("modules/alerts.bicep")
    group = doc["resources"]["rules"]
    assert group["type"] == "Microsoft.AlertsManagement/prometheusRuleGroups"
    azure = {r["alert"]: r for r in group["config"]["properties"]["rules"]}
    prometheus = {r["alert"]: r for r in rules()}
    assert set(azure) == set(prometheus)
    severity = {"critical": 1, "warning": 2}
    for name, rule in prometheus.items():
        assert azure[name]["expression"] == rule["expr"], name
        assert azure[name]["for"] == iso_duration(rule["for"]), name
        assert azure[name]["severity"] == severity[rule["labels"]["severity"]], name
        assert azure[name]["actions"] == "actions"  # the on-call action group
    (scope,) = group["config"]["properties"]["scopes"]
    assert scope["operator"]["operands"] == {"operand_1": "workspace", "operand_2": "id"}
    # main.bicep deploys it, mailing the budget's contacts
    module = bicep("main.bicep")["modules"]["alerts"]
    assert module["detail"]["path"] == "modules/alerts.bicep"
    assert module["config"]["params"]["alertEmails"] == "budgetContactEmails"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian: apt install prometheus)")
def test_promtool_accepts_rules_and_config(tmp_path: Path) -> None:
    for args in (["check", "rules", str(RULES_FILE)], ["check", "config", str(SCRAPE_FILE)]):
        done = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
