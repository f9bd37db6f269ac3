"""The scale benchmark's synthetic shop log: seeded, skewed as documented, and read by the normal ingestion."""

from __future__ import annotations

from pathlib import Path

from recsys_assets.contract.settings import get_settings
from recsys_assets.contract.sources import EventLogSource
from recsys_assets.lib.ingest.cleaning import clean_events
from recsys_assets.lib.ingest.readers import read_event_log
from recsys_assets.tools.synthetic import ShopLog, generate, write


def test_the_log_is_seeded_and_shaped_like_a_shop() -> None:
    log = ShopLog(events=60_000, items=5_000, seed=7)
    events, items = generate(log)
    again, _ = generate(log)
    assert events.equals(again)
    assert abs(events.num_rows - log.events) < 0.02 * log.events
    ev = events.to_pandas()
    counts = ev["event_type"].value_counts()
    assert counts["view"] > counts["add_to_cart"] > counts["favorite"] > counts["purchase"] > 0
    # popularity is skewed: the top 1% of items take a large share of the events
    per_item = ev["item_id"].value_counts().to_numpy()
    assert per_item[: log.items // 100].sum() > 0.2 * len(ev)
    # activity is log-normal: the median user is far below the mean, a few are heavy
    per_user = ev["user_id"].value_counts()
    assert per_user.median() < 0.7 * per_user.mean() and per_user.max() > 10 * per_user.median()
    # every item of the log is in the catalog, which has categories of very different sizes
    cat = items.to_pandas()
    assert set(ev["item_id"]) <= set(cat["item_id"]) and len(cat) == log.items
    sizes = cat["categories"].value_counts().to_numpy()
    assert len(sizes) == log.n_categories and sizes[0] > 5 * sizes[-1]
    # a user's purchase follows their view of the item
    buys = ev[ev["event_type"] == "purchase"].head(50)
    views = ev[ev["event_type"] == "view"].set_index(["user_id", "item_id"])["timestamp"]
    for row in buys.itertuples():
        assert (views.loc[[(row.user_id, row.item_id)]] < row.timestamp).any()


def test_the_written_files_are_read_through_the_event_log_configuration(tmp_path: Path) -> None:
    out = write(ShopLog(events=5_000, items=500), tmp_path)
    source = EventLogSource(**out["event_log"])
    raw = read_event_log(source)
    assert len(raw) == out["events"]
    assert set(raw["event_type"]) == {"view", "add_to_cart", "favorite", "purchase"}
    cleaned = clean_events(raw, get_settings().cleaning(), unit=source.timestamp_unit)
    assert len(cleaned.rejected) == 0 and len(cleaned.interactions) > 0
    assert cleaned.interactions["timestamp"].min().year == 2025
