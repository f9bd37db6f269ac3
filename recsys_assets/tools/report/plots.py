"""The report's plots as PNG bytes (matplotlib, no display): embedded in the HTML and placed on the slides."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # no display: the report is built on servers and in tests

import matplotlib.pyplot as plt
import pandas as pd

from recsys_assets.contract import attribution

SIZE = (8.0, 3.6)
CHAMPION_COLOUR, OTHER_COLOUR = "#1f6feb", "#9aa5b1"


def _png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def model_comparison(table: pd.DataFrame, champion: str | None) -> bytes | None:
    """NDCG@10 per model (temporal protocol), the champion highlighted."""
    if table.empty or table["NDCG@10"].isna().all():
        return None
    data = table.dropna(subset=["NDCG@10"]).sort_values("NDCG@10")
    fig, ax = plt.subplots(figsize=(SIZE[0], max(2.0, 0.35 * len(data) + 1)))
    colours = [CHAMPION_COLOUR if m == champion else OTHER_COLOUR for m in data["model"]]
    ax.barh(data["model"], data["NDCG@10"], color=colours)
    ax.set_xlabel("NDCG@10 (temporal protocol, all test users)")
    ax.set_title("Model comparison (champion in blue)")
    return _png(fig)


def ctr_over_time(lists: pd.DataFrame) -> bytes | None:
    """List CTR per day and A/B arm, from the API's event log."""
    if not len(lists):
        return None
    daily = attribution.kpis_over_time(lists, "D", by="arm")
    fig, ax = plt.subplots(figsize=SIZE)
    for arm, group in daily.groupby("arm"):
        ax.plot(group["period"], group["ctr"] * 100, marker="o", label=str(arm))
    ax.set_ylabel("list CTR (%)")
    ax.set_title("Online CTR per day and arm")
    ax.legend()
    fig.autofmt_xdate()
    return _png(fig)


def drift_windows(per_window: pd.DataFrame) -> bytes | None:
    """Each live window's drift score (share of drifted data features), drifted windows in red."""
    if per_window.empty:
        return None
    fig, ax = plt.subplots(figsize=SIZE)
    when = pd.to_datetime(per_window["window_end"], utc=True)
    ax.plot(when, per_window["score"], color=OTHER_COLOUR)
    drifted = per_window["drifted"].astype(bool).to_numpy()
    ax.scatter(when[drifted], per_window["score"][drifted], color="#d1242f", label="drift detected", zorder=3)
    ax.scatter(when[~drifted], per_window["score"][~drifted], color=CHAMPION_COLOUR, label="no drift", zorder=3)
    ax.set_ylabel("share of drifted features")
    ax.set_title("Drift per live window")
    ax.legend()
    fig.autofmt_xdate()
    return _png(fig)


def training_times(times: pd.DataFrame | None) -> bytes | None:
    """Training seconds per model (latest run per model and protocol, from MLflow)."""
    if times is None or times.empty:
        return None
    data = times.assign(label=times["model"] + " (" + times["protocol"].replace("", "-") + ")").sort_values(
        "train_seconds"
    )
    fig, ax = plt.subplots(figsize=(SIZE[0], max(2.0, 0.35 * len(data) + 1)))
    ax.barh(data["label"], data["train_seconds"], color=OTHER_COLOUR)
    ax.set_xlabel("training time (s)")
    ax.set_title("Training time per model")
    return _png(fig)
