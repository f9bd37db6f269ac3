"""How the event log is ingested (`Settings.ingestion`, `RECSYS_INGESTION__*`): all of it in every run, or
only the source files not ingested yet, into day partitions of the cleaned interactions.

Kept out of `settings.py` so the settings module stays one screenful per concern; `Settings` holds one.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# Where the day partitions and their manifest live, under the storage root:
# `interactions/day=YYYY-MM-DD/part.parquet` and `interactions/_manifest.json`.
DAY_PARTITIONS = "interactions"
MANIFEST = "_manifest.json"
# The rows `raw_sources` read in a daily run, handed to `clean` (removed once they are stored).
PENDING = "_pending.json"


class IngestionConfig(BaseModel):
    """`mode: full` (the default) reads and cleans the whole log in every run; `mode: daily` reads only the
    source files (and live windows) not ingested yet, cleans them and rewrites only the days they touch;
    `interactions` is the union of the day partitions, the same table a full run gives."""

    model_config = ConfigDict(frozen=True)

    mode: Literal["full", "daily"] = Field(
        default="full",
        description="`full`: read and clean the whole log in every run; `daily`: only new source files, stored "
        "as day partitions under `<storage>/interactions/` (an event log with timestamps only).",
    )
    reingest: bool = Field(
        default=False,
        description="Daily mode: re-read and re-clean every file in the next run (a full re-ingest). It also "
        "happens by itself when the source mapping or the cleaning rules changed, or an ingested file changed "
        "or went away.",
    )
    cron: str = Field(
        default="30 0 * * *",
        description="Daily mode: when `daily_ingestion_schedule` runs the ingestion job (UTC; default 00:30).",
    )
