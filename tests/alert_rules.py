"""The alert rules of infra/monitoring/alerts.yml, read for the tests: the rules, and the metric names
each PromQL expression reads (without a PromQL parser: label matchers, grouping clauses, ranges,
function calls, keywords and numbers removed, what is left are metric names)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tests.conftest import ROOT

RULES_FILE = ROOT / "infra" / "monitoring" / "alerts.yml"
SCRAPE_FILE = ROOT / "infra" / "monitoring" / "prometheus.yml"
# synthesized by Prometheus for every target, not exported by the API
PROMETHEUS_OWN = {"up"}
_KEYWORDS = {
    *("sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values"),
    *("by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset"),
    *("inf", "nan"),
}


def rules(path: Path = RULES_FILE) -> list[dict]:
    """Every rule, with its group's name as `group`."""
    doc = yaml.safe_load(path.read_text())
    return [{**rule, "group": group["name"]} for group in doc["groups"] for rule in group["rules"]]


def metric_names(expr: str) -> set[str]:
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range selectors
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        following = text[match.end() :].lstrip()
        if following.startswith("(") or match.group() in _KEYWORDS:
            continue  # a function call or a keyword
        names.add(match.group())
    return names


def balanced(expr: str) -> bool:
    pairs, stack = {")": "(", "]": "[", "}": "{"}, []
    for ch in re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr):
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs and (not stack or stack.pop() != pairs[ch]):
            return False
    return not stack


def iso_duration(prometheus: str) -> str:
    """`10m` -> `PT10M`, `1h` -> `PT1H`, `0m` -> `PT0M` (Azure's rule `for`)."""
    number, unit = int(prometheus[:-1]), prometheus[-1]
    return f"PT{number}{unit.upper()}"
