"""The API's durable event log: append-only CSV segments the pipeline ingests like any event log.

Layout: `<events_dir>/events-<UTC start>-<host>-<pid>-<n>.csv`, one open segment per worker process
(no two processes ever write the same file, so no cross-process locking), each with a header of
`recsys_assets.contract.events.EVENT_COLUMNS` plus its `SERVING_COLUMNS` (`model_version`, `arm`, `policy`,
`propensity`). A segment is closed and a new
one started past `events_segment_max_bytes` or `events_segment_max_seconds`.

Why this mechanism:

* events are acknowledged (202) only after their rows are written with one `os.write` on an
  `O_APPEND` descriptor and `os.fsync`'d; a new segment's directory entry is fsync'd too. An
  acknowledged event therefore survives `kill -9` of the API and a machine crash, without a broker;
* CSV with a header is the format the pipeline's `event_log` source already reads
  (`RECSYS_SOURCE=event_log`, `RECSYS_EVENT_LOG='{"paths": ["<events_dir>/*.csv"]}'`); extra
  columns are ignored there;
* segments are never rewritten, so a reader can copy or ingest closed segments at any time. A
  batch interrupted by a crash can leave a torn last line in its segment; it was not acknowledged,
  the pipeline rejects that one line as `malformed_row`, and the next process writes a new segment.

Impressions (`event_type` "impression", `value` = 1-based position, `event_id` =
`<recommendation_id>:<position>`, with the serving policy and the propensity of the item at that
position, `recsys_assets.contract.exploration`) go through an in-memory buffer that a background task flushes and
fsyncs every `FLUSH_SECONDS`, and that every event append flushes first, so an impression is in the
file before any event that answers it. Serving a list never waits for the disk; a crash can lose the
impressions of the last fraction of a second, never an acknowledged event.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

from recsys_assets.contract.events import EVENT_COLUMNS, SERVING_COLUMNS

log = logging.getLogger(__name__)

LOG_COLUMNS: tuple[str, ...] = (*EVENT_COLUMNS, *SERVING_COLUMNS)
IMPRESSION = "impression"
FLUSH_SECONDS = 0.5

Row = Sequence[object]


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="microseconds")


def encode_rows(rows: Iterable[Row]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    for row in rows:
        writer.writerow(["" if v is None else v for v in row])
    # ids, in bodies and paths, follow the id rule (ASCII); a lone surrogate elsewhere is escaped
    # rather than allowed to fail the write
    return buf.getvalue().encode("utf-8", errors="backslashreplace")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class EventLog:
    """Thread-safe appender of one process's segments."""

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int, max_seconds: float) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.max_seconds = max_seconds
        self._lock = threading.Lock()
        self._pending_lock = threading.Lock()
        self._fd: int | None = None
        self._path: Path | None = None
        self._opened_at = 0.0
        self._size = 0
        self._seq = 0
        self._pending: list[Row] = []
        self._dirty = False
        self._host = socket.gethostname().replace("-", "_") or "host"
        self.directory.mkdir(parents=True, exist_ok=True)

    @property
    def current_segment(self) -> Path | None:
        return self._path

    def segments(self) -> list[Path]:
        return sorted(self.directory.glob("events-*.csv"))

    def append(self, rows: Sequence[Row]) -> None:
        """Write `rows` (after any buffered impressions) and fsync; returns once they are durable."""
        with self._lock:
            self._write_locked([*self._take_pending(), *rows])
            self._sync_locked()

    def add_impressions(self, rows: Sequence[Row]) -> None:
        """Buffer impression rows; the next flush or append writes them."""
        # a lock of its own, never held during I/O, so serving a list never waits for an fsync
        with self._pending_lock:
            self._pending.extend(rows)

    def flush(self) -> None:
        """Write buffered impressions and fsync whatever is not yet durable."""
        with self._lock:
            pending = self._take_pending()
            if pending:
                self._write_locked(pending)
            if self._dirty:
                self._sync_locked()
            elif self._fd is not None and time.time() - self._opened_at > self.max_seconds:
                self._close_locked()

    def close(self) -> None:
        with self._lock:
            pending = self._take_pending()
            if pending:
                self._write_locked(pending)
            self._close_locked()

    def _take_pending(self) -> list[Row]:
        with self._pending_lock:
            pending, self._pending = self._pending, []
        return pending

    def _write_locked(self, rows: Sequence[Row]) -> None:
        if not rows:
            return
        data = encode_rows(rows)
        if self._fd is None or self._size >= self.max_bytes or time.time() - self._opened_at > self.max_seconds:
            self._open_locked()
        assert self._fd is not None
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self._size += len(data)
        self._dirty = True

    def _sync_locked(self) -> None:
        if self._fd is not None and self._dirty:
            os.fsync(self._fd)
            self._dirty = False

    def _open_locked(self) -> None:
        self._close_locked()
        self._seq += 1
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
        name = f"events-{stamp}-{self._host}-{os.getpid()}-{self._seq:04d}-{uuid.uuid4().hex[:6]}.csv"
        path = self.directory / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        header = encode_rows([LOG_COLUMNS])
        os.write(fd, header)
        os.fsync(fd)
        # the new name must survive a crash too, or its fsync'd rows would be unreachable
        _fsync_dir(self.directory)
        self._fd, self._path, self._opened_at, self._size = fd, path, time.time(), len(header)
        log.info("event log: writing %s", path)

    def _close_locked(self) -> None:
        if self._fd is None:
            return
        if self._dirty:
            os.fsync(self._fd)
            self._dirty = False
        os.close(self._fd)
        self._fd = None
