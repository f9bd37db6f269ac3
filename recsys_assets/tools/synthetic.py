"""A seeded synthetic shop log for the scale benchmark: an event log and an item catalog the normal
ingestion reads through `RECSYS_EVENT_LOG` (`python -m recsys_assets.tools.synthetic --events 1e6 --items 1e5`).

The shape of a shop's log, not its content:

* a category catalog: `items // 500` categories whose sizes and traffic follow Zipf's law (exponent
  `category_skew`); every item belongs to one category and has a title;
* item popularity inside a category is Zipf-distributed (exponent `item_skew`) by the item's rank there;
* user activity is log-normal (median `events / users`, sigma `activity_sigma`): most users leave a few
  events, a few leave hundreds; each user has 1-3 favourite categories and draws `focus` of their
  interest from them, the rest from the whole shop;
* a view-heavy funnel: every interest is a view; a share of views add to the cart (`cart`), a share are
  favourited (`favorite`), a share of carts are bought (`purchase`), each a few minutes after the view;
* times span `days` days, each user's events in order, in seconds.

Files: `events.parquet` (user_id, item_id, event_type, timestamp in s), `items.parquet` (item_id, title,
categories), and `event_log.json`, the `RECSYS_EVENT_LOG` value that reads them.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

START = 1_735_689_600  # 2025-01-01T00:00Z


@dataclass(frozen=True)
class ShopLog:
    """The generator's parameters (defaults: the issue's 1M-event shop, ~21 events per user)."""

    events: int = 1_000_000
    items: int = 100_000
    users: int | None = None  # None: events / 21
    categories: int | None = None  # None: items / 500
    item_skew: float = 1.05
    category_skew: float = 0.9
    activity_sigma: float = 1.2
    focus: float = 0.8
    cart: float = 0.08
    favorite: float = 0.04
    purchase: float = 0.35  # of carts
    days: int = 30
    seed: int = 2020

    @property
    def n_users(self) -> int:
        return self.users or max(1, self.events // 21)

    @property
    def n_categories(self) -> int:
        return self.categories or max(1, self.items // 500)


def _zipf(n: int, skew: float) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** skew
    return w / w.sum()


def catalog(log: ShopLog) -> tuple[np.ndarray, np.ndarray]:
    """Each item's category and each category's first item: items are grouped by category, category sizes
    Zipf-distributed (at least one item each)."""
    if not 1 <= log.n_categories <= log.items:
        raise ValueError(f"categories must be between 1 and items ({log.items}), got {log.n_categories}")
    sizes = 1 + np.floor(_zipf(log.n_categories, log.category_skew) * (log.items - log.n_categories)).astype(np.int64)
    sizes[0] += log.items - sizes.sum()  # what rounding left over goes to the largest category
    item_cat = np.repeat(np.arange(log.n_categories), sizes)
    return item_cat, np.concatenate([[0], np.cumsum(sizes)[:-1]])


def _draw_in_category(cats: np.ndarray, first: np.ndarray, sizes: np.ndarray, log: ShopLog, rng) -> np.ndarray:
    """An item per draw, inside the draw's category, Zipf by rank (inverse-CDF of the continuous power law)."""
    u = rng.random(len(cats))
    n = sizes[cats].astype(np.float64)
    a = log.item_skew
    if abs(a - 1.0) < 1e-9:
        rank = np.exp(u * np.log(n + 1.0))
    else:
        rank = (1.0 + u * ((n + 1.0) ** (1.0 - a) - 1.0)) ** (1.0 / (1.0 - a))
    rank = np.clip(np.floor(rank).astype(np.int64), 1, sizes[cats])
    return first[cats] + rank - 1


def generate(log: ShopLog) -> tuple[pa.Table, pa.Table]:
    """The event log and the item catalog as Arrow tables (about `log.events` events)."""
    rng = np.random.default_rng(log.seed)
    item_cat, first = catalog(log)
    sizes = np.bincount(item_cat, minlength=log.n_categories)
    # the funnel's extra events per interest; interests are drawn so that the total is about `events`
    per_interest = 1.0 + log.cart + log.favorite + log.cart * log.purchase
    n_interest = int(log.events / per_interest)
    median = n_interest / log.n_users * np.exp(-(log.activity_sigma**2) / 2)
    activity = rng.lognormal(np.log(max(median, 1e-9)), log.activity_sigma, log.n_users)
    counts = np.maximum(1, np.round(activity * n_interest / activity.sum())).astype(np.int64)
    user = np.repeat(np.arange(log.n_users), counts)
    cat_p = _zipf(log.n_categories, log.category_skew)[np.argsort(rng.permutation(log.n_categories))]
    favourites = rng.choice(log.n_categories, size=(log.n_users, 3), p=cat_p)
    n_fav = rng.integers(1, 4, log.n_users)
    pick = np.minimum(rng.integers(0, 3, len(user)), n_fav[user] - 1)
    cats = np.where(
        rng.random(len(user)) < log.focus,
        favourites[user, pick],
        rng.choice(log.n_categories, size=len(user), p=cat_p),
    )
    item = _draw_in_category(cats, first, sizes, log, rng)
    # each user's interests spread over their own stretch of the period, in order
    span = log.days * 86_400
    start = rng.integers(0, span // 2, log.n_users)
    offsets = rng.random(len(user))
    order = np.lexsort((offsets, user))
    t = START + start[user] + (offsets[order] * (span // 2)).astype(np.int64)
    user, item = user[order], item[order]
    carted = rng.random(len(user)) < log.cart
    faved = rng.random(len(user)) < log.favorite
    bought = carted & (rng.random(len(user)) < log.purchase)
    parts = [
        (user, item, "view", t),
        (user[faved], item[faved], "favorite", t[faved] + 30),
        (user[carted], item[carted], "add_to_cart", t[carted] + 60),
        (user[bought], item[bought], "purchase", t[bought] + 300),
    ]
    users = np.concatenate([p[0] for p in parts])
    items = np.concatenate([p[1] for p in parts])
    types = pa.DictionaryArray.from_arrays(
        np.concatenate([np.full(len(p[0]), i, dtype=np.int8) for i, p in enumerate(parts)]),
        pa.array([p[2] for p in parts]),
    )
    times = np.concatenate([p[3] for p in parts])
    events = pa.table(
        {
            "user_id": pa.array(users.astype(np.int64)),
            "item_id": pa.array(items.astype(np.int64)),
            "event_type": types.cast(pa.string()),
            "timestamp": pa.array(times.astype(np.int64)),
        }
    )
    ids = np.arange(log.items)
    catalog_table = pa.table(
        {
            "item_id": pa.array(ids.astype(np.int64)),
            "title": pa.array([f"item {i}" for i in ids]),
            "categories": pa.array([f"category {c}" for c in item_cat]),
        }
    )
    return events, catalog_table


def write(log: ShopLog, directory: str | Path) -> dict:
    """Write `events.parquet`, `items.parquet` and `event_log.json` (the `RECSYS_EVENT_LOG` value) to
    `directory`; returns that configuration with the counts."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    events, items = generate(log)
    pq.write_table(events, out / "events.parquet", row_group_size=1_000_000)
    pq.write_table(items, out / "items.parquet")
    config = {
        "paths": [str((out / "events.parquet").resolve())],
        "timestamp_unit": "s",
        "items": {"path": str((out / "items.parquet").resolve())},
    }
    (out / "event_log.json").write_text(json.dumps(config))
    (out / "shop_log.json").write_text(json.dumps({**asdict(log), "written_events": events.num_rows}, indent=2))
    return {"event_log": config, "events": events.num_rows, "users": log.n_users, "items": log.items}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recsys_assets.tools.synthetic", description=__doc__)
    parser.add_argument("--events", type=float, default=1e6)
    parser.add_argument("--items", type=float, default=1e5)
    parser.add_argument("--users", type=float, default=None)
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--out", required=True, help="directory for events.parquet, items.parquet, event_log.json")
    args = parser.parse_args(argv)
    log = ShopLog(
        events=int(args.events), items=int(args.items), users=int(args.users) if args.users else None, seed=args.seed
    )
    print(json.dumps(write(log, args.out), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
