"""Small event logs in the shapes real shops and content sites export (issue 15), written by the tests:
each shape's files and the `RECSYS_EVENT_LOG` that ingests it by configuration alone.

Never copies of public data: every value comes from a small deterministic formula. Each log has 30
users and about 300 events, enough for the random and temporal splits to have every part.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

N_USERS = 30
N_ITEMS = 24
T0 = 1_704_067_200  # 2024-01-01 in Unix seconds


@dataclass(frozen=True)
class Shape:
    """Files of one shape (name -> text) and its configuration, with `{dir}` for the files' folder."""

    files: dict[str, str]
    config: dict[str, Any]

    def write(self, folder: Path) -> dict[str, Any]:
        """Write the files into `folder`; the configuration with their paths."""
        for name, text in self.files.items():
            (folder / name).write_text(text)
        return _fill(self.config, str(folder))


def _fill(value: Any, folder: str) -> Any:
    if isinstance(value, str):
        return value.replace("{dir}", folder)
    if isinstance(value, list):
        return [_fill(v, folder) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, folder) for k, v in value.items()}
    return value


def _unseen(start: int, seen: set[int]) -> int:
    """The first item from `start` on (cyclically) that is not in `seen`."""
    return next((start + j) % N_ITEMS for j in range(N_ITEMS) if (start + j) % N_ITEMS not in seen)


def _pairs(per_user: int = 10) -> list[tuple[int, int, int]]:
    """(user, item, step) triples: each user's items drift with the user, popular items shared; the
    last two steps are items new to the user (so the latest events are not all re-consumptions)."""
    rows = []
    for u in range(N_USERS):
        seen: set[int] = set()
        for k in range(per_user):
            item = (u * 3 + k * k + (k % 3) * 5) % N_ITEMS if k % 4 else k % 5
            if k >= per_user - 2:
                item = _unseen(u * 5 + k, seen)
            seen.add(item)
            rows.append((u, item, k))
    return rows


def ratings_without_type() -> Shape:
    """MovieLens' `ratings.csv`: `userId,movieId,rating,timestamp`, no event-type column."""
    lines = ["userId,movieId,rating,timestamp"]
    lines += [f"{u + 1},{i + 100},{1 + (u + i) % 5}.0,{T0 + 3600 * (k * N_USERS + u)}" for u, i, k in _pairs()]
    config = {
        "paths": ["{dir}/ratings.csv"],
        "columns": {"user_id": "userId", "item_id": "movieId", "value": "rating"},
        "defaults": {"event_type": "rating"},
        "timestamp_unit": "s",
    }
    return Shape({"ratings.csv": "\n".join(lines) + "\n"}, config)


def no_timestamps() -> Shape:
    """A play-count file with no time at all: `user,item,plays`."""
    lines = ["user,item,plays"]
    lines += [f"u{u},track{i},{1 + (u * i) % 7}" for u, i, _ in _pairs()]
    config = {
        "paths": ["{dir}/plays.csv"],
        "columns": {"user_id": "user", "item_id": "item", "value": "plays"},
        "defaults": {"event_type": "view"},
        "time": "none",
    }
    return Shape({"plays.csv": "\n".join(lines) + "\n"}, config)


def tab_separated_csv() -> Shape:
    """A tab-separated file named `.csv`, its own event names and ISO times."""
    lines = ["user_id\titem_id\taction\ttime"]
    lines += [
        f"u{u}\ti{i}\t{'buy' if k % 3 == 0 else 'pv'}\t2024-01-{1 + k:02d}T{u % 24:02d}:00:00Z" for u, i, k in _pairs()
    ]
    config = {
        "paths": ["{dir}/events.csv"],
        "columns": {"event_type": "action", "timestamp": "time"},
        "event_types": {"pv": "view", "buy": "purchase"},
        "timestamp_unit": "iso",
    }
    return Shape({"events.csv": "\n".join(lines) + "\n"}, config)


def basket_log() -> Shape:
    """A grocery basket log with order numbers instead of times: `user_id,order_number,product_id,reordered`.

    Each user places 5 orders of 2 to 3 products; order numbers restart at 1 for every user."""
    lines = ["user_id,order_number,product_id,reordered"]
    for u in range(N_USERS):
        seen: set[int] = set()
        for order in range(1, 6):
            for j in range(2 + (u + order) % 2):
                product = 6 + (u + order * 5 + j * 3) % (N_ITEMS - 6) if j else u % 6
                lines.append(f"{u + 1},{order},{product + 1},{int(product in seen)}")
                seen.add(product)
    config = {
        "paths": ["{dir}/order_products.csv"],
        "columns": {"item_id": "product_id"},
        "defaults": {"event_type": "purchase"},
        "sequence_column": "order_number",
    }
    return Shape({"order_products.csv": "\n".join(lines) + "\n"}, config)


def repeat_heavy() -> Shape:
    """A purchase log where users mostly buy again what they bought before (4 own items, 12 purchases;
    the latest purchase of every other customer is new to them)."""
    lines = ["customer,sku,ts"]
    for u in range(N_USERS):
        own = [(u * 5 + j) % N_ITEMS for j in range(4)]
        seen: set[int] = set()
        for k in range(12):
            item = own[(k * 7 + u) % 4] if k % 6 else (u + k) % N_ITEMS
            if k == 11 and u % 2:  # every other customer's latest purchase is something new
                item = _unseen(u + 13, seen)
            seen.add(item)
            lines.append(f"c{u},sku{item},{T0 + 86400 * k + 60 * u}")
    config = {
        "paths": ["{dir}/purchases.csv"],
        "columns": {"user_id": "customer", "item_id": "sku", "timestamp": "ts"},
        "defaults": {"event_type": "purchase"},
    }
    return Shape({"purchases.csv": "\n".join(lines) + "\n"}, config)


def several_sources() -> Shape:
    """Ratings, views and purchases in three files of three shapes, into one `interactions` table."""
    pairs = _pairs()
    ratings = ["userId,movieId,rating,timestamp"]
    ratings += [f"{u},{i},{1 + (u + i) % 5},{T0 + 3600 * (k * N_USERS + u)}" for u, i, k in pairs if k % 3 == 0]
    views = [f"{u}\t{i}\t{(T0 + 3600 * (k * N_USERS + u)) * 1000}" for u, i, k in pairs if k % 3 == 1]
    buys = ["client;product;when"]
    buys += [f"{u};{i};2024-01-{1 + k:02d}T{u % 24:02d}:30:00Z" for u, i, k in pairs if k % 3 == 2]
    config = {
        "sources": [
            {
                "paths": ["{dir}/ratings.csv"],
                "columns": {"user_id": "userId", "item_id": "movieId", "value": "rating"},
                "defaults": {"event_type": "rating"},
                "timestamp_unit": "s",
            },
            {
                "paths": ["{dir}/views.tsv"],
                "header": False,
                "names": ["user_id", "item_id", "timestamp"],
                "defaults": {"event_type": "view"},
                "timestamp_unit": "ms",
            },
            {
                "paths": ["{dir}/purchases.csv"],
                "columns": {"user_id": "client", "item_id": "product", "timestamp": "when"},
                "defaults": {"event_type": "purchase"},
            },
        ]
    }
    files = {
        "ratings.csv": "\n".join(ratings) + "\n",
        "views.tsv": "\n".join(views) + "\n",
        "purchases.csv": "\n".join(buys) + "\n",
    }
    return Shape(files, config)


def all_rejected() -> Shape:
    """The first attempt at a ratings file: the rating column mapped as the type too, every row rejected."""
    lines = ["user_id,item_id,event_type,timestamp,value"]
    lines += [f"u{u},i{i},rating,{T0 + k},{7 + k % 3}" for u, i, k in _pairs(3)]
    return Shape({"ratings.csv": "\n".join(lines) + "\n"}, {"paths": ["{dir}/ratings.csv"]})


# Shapes that ingest by configuration alone, and the time mode each gets.
INGESTED: dict[str, tuple[Shape, str]] = {
    "ratings_without_type": (ratings_without_type(), "timestamp"),
    "no_timestamps": (no_timestamps(), "none"),
    "tab_separated_csv": (tab_separated_csv(), "timestamp"),
    "basket_log": (basket_log(), "sequence"),
    "repeat_heavy": (repeat_heavy(), "timestamp"),
    "several_sources": (several_sources(), "timestamp"),
}
