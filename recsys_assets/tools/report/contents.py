"""What both documents show, computed once from the inputs (`assemble`)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import pandas as pd

from recsys_assets.contract import events
from recsys_assets.tools.report import numbers, plots
from recsys_assets.tools.report.inputs import ReportInputs


@dataclass
class Report:
    """Everything both documents show, computed once."""

    built_at: str
    storage_uri: str
    champion: dict | None
    kpis: list[numbers.Kpi]
    models: pd.DataFrame
    arms: pd.DataFrame
    replay: pd.DataFrame | None
    drift: numbers.DriftSummary
    cost: pd.DataFrame
    roadmap: list[str]
    plots: dict[str, bytes | None] = field(default_factory=dict)

    def kpi(self, key: str) -> numbers.Kpi:
        return next(k for k in self.kpis if k.key == key)

    @property
    def champion_label(self) -> str:
        if not self.champion:
            return "no champion yet"
        version = self.champion.get("registry_version")
        return f"{self.champion.get('model_version', '')}" + (f" (registry version {version})" if version else "")


def assemble(inputs: ReportInputs) -> Report:
    models = numbers.model_comparison(inputs)
    drift = numbers.drift_summary(inputs)
    champion = numbers.champion_model(inputs)
    replay = inputs.table(events.REPLAY_RUNS)
    return Report(
        built_at=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        storage_uri=inputs.storage_uri,
        champion=inputs.champion,
        kpis=numbers.all_kpis(inputs),
        models=models,
        arms=numbers.ab_arms(inputs),
        replay=replay,
        drift=drift,
        cost=numbers.cost_drivers(inputs),
        roadmap=inputs.roadmap,
        plots={
            "models": plots.model_comparison(models, champion),
            "ctr": plots.ctr_over_time(inputs.lists),
            "drift": plots.drift_windows(drift.per_window),
            "training": plots.training_times(inputs.train_times),
        },
    )
