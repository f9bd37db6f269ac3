"""Our splits as RecBole benchmark files: column checks, id coding, the atomic files and the data settings.

The splits are written as `<dataset>.train.inter`, `.valid.inter` and `.test.inter`, so RecBole trains, early-stops
and tests on exactly the rows the caller chose. Our ids may hold tabs or spaces, which RecBole's file format cannot:
it sees their positions in the sorted id universe instead.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recsys_assets.lib.models.recbole_config import ModelSpec

# The canonical interactions table. RecBole models are implicit-feedback here: only user_id, item_id and timestamp
# are read (filter event types before calling; value and weight are not used).
INTERACTION_COLUMNS: tuple[str, ...] = ("user_id", "item_id", "event_type", "timestamp", "value", "weight")

# Never "ml-100k": RecBole silently swaps that name for its bundled copy of MovieLens.
DATASET_NAME = "recsys"
SPLITS: tuple[str, ...] = ("train", "valid", "test")

# RecBole's field names; the sequence fields follow its defaults (ITEM_ID_FIELD + LIST_SUFFIX).
USER_FIELD, ITEM_FIELD, TIME_FIELD = "user_id", "item_id", "timestamp"
ITEM_LIST_FIELD, ITEM_LIST_LENGTH_FIELD = "item_id_list", "item_length"


def check_frame(name: str, frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` if RecBole can read it as the `name` split; a ValueError naming the problem otherwise."""
    missing = [column for column in ("user_id", "item_id", "timestamp") if column not in frame.columns]
    if missing:
        raise ValueError(f"the {name} split lacks column(s) {missing}; expected {list(INTERACTION_COLUMNS)}")
    if frame.empty and name != "test":
        raise ValueError(f"the {name} split is empty: RecBole needs rows in train and valid")
    if frame[["user_id", "item_id", "timestamp"]].isna().any().any():
        raise ValueError(f"the {name} split has missing user_id, item_id or timestamp values")
    return frame


def id_universe(frames: Mapping[str, pd.DataFrame], column: str) -> np.ndarray:
    """Every id of `column` in any split, sorted: RecBole's token of an id is its position here."""
    return np.unique(np.concatenate([frame[column].astype(str).to_numpy() for frame in frames.values()]))


def encode(frame: pd.DataFrame, users: np.ndarray, items: np.ndarray, spec: ModelSpec) -> pd.DataFrame:
    """One split as RecBole's rows: id positions as tokens, seconds since the epoch, oldest first per user."""
    timestamps = pd.to_datetime(frame["timestamp"], utc=True)
    coded = pd.DataFrame(
        {
            "user": np.searchsorted(users, frame["user_id"].astype(str).to_numpy()).astype(str),
            "item": np.searchsorted(items, frame["item_id"].astype(str).to_numpy()).astype(str),
            "timestamp": (timestamps - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1),
        }
    )
    coded = coded.sort_values(["user", "timestamp"], kind="stable")
    if not spec.sequential:
        # Implicit feedback: a pair is one positive however many events it had (the first one is kept).
        coded = coded.drop_duplicates(["user", "item"], keep="first")
    return coded.reset_index(drop=True)


def write_atomic_files(folder: Path, coded: Mapping[str, pd.DataFrame], spec: ModelSpec, max_length: int) -> None:
    """The three benchmark files in `folder`; a sequential model's rows carry each event's earlier items."""
    folder.mkdir(parents=True)
    if spec.sequential:
        rows = _sequence_rows(coded, max_length)
        header = f"{USER_FIELD}:token\t{ITEM_FIELD}:token\t{TIME_FIELD}:float\t{ITEM_LIST_FIELD}:token_seq\n"
    else:
        rows = dict(coded)
        header = f"{USER_FIELD}:token\t{ITEM_FIELD}:token\t{TIME_FIELD}:float\n"
    for name, frame in rows.items():
        if frame.empty and not (name == "test" and coded[name].empty):
            raise ValueError(f"the {name} split has no rows RecBole can use (sequential: no event with history)")
        path = folder / f"{DATASET_NAME}.{name}.inter"
        with path.open("w", encoding="utf-8") as handle:
            handle.write(header)
            frame.to_csv(handle, sep="\t", header=False, index=False, float_format="%.6f")


def _sequence_rows(coded: Mapping[str, pd.DataFrame], max_length: int) -> dict[str, pd.DataFrame]:
    """RecBole's pre-augmented sequential format: one row per event with the user's earlier items as a list.

    RecBole does this augmentation itself only when it splits the data; with benchmark files it must be given.
    """
    earlier: dict[str, list[str]] = defaultdict(list)
    rows: dict[str, pd.DataFrame] = {}
    for name in SPLITS:
        records = []
        for user, item, timestamp in coded[name][["user", "item", "timestamp"]].itertuples(index=False):
            history = earlier[user]
            if history:  # an event with no earlier item has nothing to predict it from
                records.append((user, item, timestamp, " ".join(history[-max_length:])))
            history.append(item)
        rows[name] = pd.DataFrame(records, columns=["user", "item", "timestamp", "items"])
    return rows


def data_settings(root: Path, spec: ModelSpec) -> dict[str, Any]:
    """The data part of RecBole's configuration: the benchmark files under `root`, CPU, full ranking."""
    columns = [USER_FIELD, ITEM_FIELD, TIME_FIELD] + ([ITEM_LIST_FIELD] if spec.sequential else [])
    settings: dict[str, Any] = {
        "data_path": str(root),
        "benchmark_filename": list(SPLITS),
        "checkpoint_dir": str(root / "checkpoints"),
        "USER_ID_FIELD": USER_FIELD,
        "ITEM_ID_FIELD": ITEM_FIELD,
        "TIME_FIELD": TIME_FIELD,
        "load_col": {"inter": columns},
        "normalize_all": False,
        "use_gpu": False,
        "show_progress": False,
        "save_dataset": False,
        "save_dataloaders": False,
        "log_wandb": False,
        # With benchmark files RecBole ignores the split and order; the mode is what matters: full ranking.
        "eval_args": {"group_by": "user", "order": "TO", "mode": "full"},
    }
    if spec.sequential:
        settings |= {
            "ITEM_LIST_LENGTH_FIELD": ITEM_LIST_LENGTH_FIELD,
            "LIST_SUFFIX": "_list",
            # Without the alias RecBole numbers the tokens of the history lists separately from item_id.
            "alias_of_item_id": [ITEM_LIST_FIELD],
            "repeatable": True,
        }
    return settings
