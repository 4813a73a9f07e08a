"""Every scored row, profiled with whylogs and logged as a prediction, off the request path.

A request only appends its rows to per-column lists (``PendingRows``, a few microseconds). A background thread
ships them every ``ship_seconds`` (or once ``ship_rows`` wait) as compact columns (the model's input, numbers
as numpy arrays) to a ``WindowWriter``. The writer files rows under the hour of each transaction's
event time and, every ``flush_seconds`` or ``flush_rows``, writes per hour one whylogs profile of the model's
input plus ``score`` (``ProfileStore.write_window``) and one Parquet file of predictions
(``write_predictions``). Per-request ``why.log`` would cost ~15 ms; 10,000 rows at once cost ~0.3 s.

With ``writer_process=True`` (what the service does) the writer is a spawned, niced child process: those
0.3 s hold a GIL, and in the serving process they stalled requests (p99 at one connection 25 ms instead of
8 ms here). The serving process only converts and pickles a few hundred rows at a time. The writer process
applies whylogs' patches (``model_store.libraries.whylogs``) when it starts; an in-process writer profiles
with whatever the process applied.

``close()`` (the service's shutdown hook) ships what is queued, has the writer write everything and stops
it: nothing is lost on a clean shutdown. A write that fails (a full disk, say) keeps its rows for the next
attempt, never writes a row twice, and beyond ``max_rows`` waiting rows drops the oldest hour (logged and
counted) so memory stays bounded. A writer process that dies is replaced; rows not yet shipped to it stay.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from model_store import libraries
from model_store.profiles import PREDICTION_COLUMNS

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

    import pandas as pd

    from model_store.profiles import ProfileStore

logger = logging.getLogger(__name__)

SCORE_COLUMN = "score"
EVENT_SECONDS = "event_seconds"
# Prediction-log columns that are not model inputs: everything else in a window gets profiled.
NOT_PROFILED = frozenset(PREDICTION_COLUMNS) - {SCORE_COLUMN}
REPLY_TIMEOUT_SECONDS = 120.0
WRITER_NICENESS = 10


@dataclass(frozen=True)
class ScoredBatch:
    """What one request scored: its feature columns (as read) and per-row outcome."""

    columns: Mapping[str, Sequence[Any]]
    scores: Sequence[float]
    decisions: Sequence[str]
    request_ids: Sequence[str]
    event_times: Sequence[float]
    model_version: str


class PendingRows:
    """Scored rows waiting to be shipped, merged column by column as requests record them.

    Merging per request costs a few microseconds on the request path; merging hundreds of one-row requests at
    shipping time cost the shipping thread 1.2 ms of GIL per shipment, which showed in the service's p99.
    """

    def __init__(self, features: Sequence[str]) -> None:
        self.features = list(features)
        self.columns: dict[str, list[Any]] = {name: [] for name in self.features}
        self.scores: list[float] = []
        self.request_ids: list[str] = []
        self.event_times: list[float] = []
        self.decisions: list[str] = []
        self.model_versions: list[str] = []

    def __len__(self) -> int:
        return len(self.request_ids)

    def add(self, batch: ScoredBatch) -> None:
        columns = self.columns
        for name in self.features:
            columns[name].extend(batch.columns[name])
        self.scores.extend(batch.scores)
        self.request_ids.extend(batch.request_ids)
        self.event_times.extend(batch.event_times)
        self.decisions.extend(batch.decisions)
        self.model_versions.extend([batch.model_version] * len(batch.request_ids))

    def then(self, later: PendingRows) -> PendingRows:
        """These rows followed by ``later``'s (to put back rows whose shipment failed, order kept)."""
        for name in self.features:
            self.columns[name].extend(later.columns[name])
        for mine, theirs in zip(self._outcomes(), later._outcomes(), strict=True):
            mine.extend(theirs)
        return self

    def _outcomes(self) -> tuple[list[Any], ...]:
        return self.scores, self.request_ids, self.event_times, self.decisions, self.model_versions

    def shipped(self, model_input: Callable[[Mapping[str, Sequence[Any]]], dict[str, Any]]) -> dict[str, Any]:
        """The columns a writer takes: the model's input features, ``score`` and the prediction-log fields."""
        import numpy as np

        columns = model_input(self.columns)
        columns[SCORE_COLUMN] = np.asarray(self.scores, dtype=np.float64)
        columns["transaction_id"] = self.request_ids
        columns[EVENT_SECONDS] = np.asarray(self.event_times, dtype=np.float64)
        columns["decision"] = self.decisions
        columns["model_version"] = self.model_versions
        return columns


@dataclass
class _Window:
    """Rows of one hour waiting to be written, and whether their profile already is."""

    start: datetime
    parts: list[pd.DataFrame]
    profiled: bool = False

    @property
    def rows(self) -> int:
        return sum(len(p) for p in self.parts)


class WindowWriter:
    """Buffers shipped rows by hour and writes each hour's profile and prediction log exactly once."""

    def __init__(
        self,
        store: ProfileStore,
        flush_rows: int,
        flush_seconds: float,
        max_rows: int,
    ) -> None:
        self.store = store
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.max_rows = max_rows
        self.written_rows = 0
        self.dropped_rows = 0
        self._open: dict[datetime, list[pd.DataFrame]] = {}
        self._closed: deque[_Window] = deque()
        self._buffered = 0
        self._since = time.monotonic()

    @property
    def pending_rows(self) -> int:
        return self._buffered

    def add(self, columns: Mapping[str, Any]) -> None:
        """Take shipped columns (see ``PendingRows.shipped``) and file their rows under their event hour."""
        import pandas as pd

        frame = pd.DataFrame(dict(columns))
        if frame.empty:
            return
        frame["event_timestamp"] = pd.to_datetime(frame.pop(EVENT_SECONDS), unit="s", utc=True)
        for hour, rows in frame.groupby(frame["event_timestamp"].dt.floor("h"), sort=True):
            self._open.setdefault(hour.to_pydatetime(), []).append(rows)
        self._buffered += len(frame)

    def due(self) -> bool:
        return self._buffered >= self.flush_rows or (
            self._buffered > 0 and time.monotonic() - self._since >= self.flush_seconds
        )

    def write(self) -> int:
        """Write every buffered hour; returns the rows written. A failure keeps the unwritten rows."""
        self._closed.extend(_Window(start, parts) for start, parts in sorted(self._open.items()))
        self._open.clear()
        self._since = time.monotonic()
        written = 0
        try:
            while self._closed:
                window = self._closed[0]
                self._write_window(window)
                self._closed.popleft()
                written += window.rows
                self._buffered -= window.rows
        except Exception:
            self._drop_overflow()
            raise
        finally:
            self.written_rows += written
        return written

    def _write_window(self, window: _Window) -> None:
        import pandas as pd

        from model_store.profiles import profile_frame

        rows = pd.concat(window.parts, ignore_index=True) if len(window.parts) > 1 else window.parts[0]
        window.parts = [rows]
        if not window.profiled:
            self.store.write_window(
                profile_frame(rows[[c for c in rows.columns if c not in NOT_PROFILED]]), window.start
            )
            window.profiled = True
        self.store.write_predictions(rows[list(PREDICTION_COLUMNS)], window.start)

    def _drop_overflow(self) -> None:
        """Beyond ``max_rows`` waiting rows, drop the oldest hours: memory stays bounded while writes fail."""
        while self._buffered > self.max_rows and self._closed:
            oldest = self._closed.popleft()
            self._buffered -= oldest.rows
            self.dropped_rows += oldest.rows
            logger.error("traffic log full: dropped %d rows of window %s", oldest.rows, oldest.start)


def run_writer_process(
    connection: Connection, store: ProfileStore, flush_rows: int, flush_seconds: float, max_rows: int
) -> None:
    """The writer process: takes shipped rows, writes them when due, and on request ("flush", "stop")."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s [%(levelname)s] traffic-log writer: %(message)s"
    )
    # Profiling yields to serving: on a busy machine the writer catches up when requests leave CPU to spare.
    os.nice(WRITER_NICENESS)
    # The server's shutdown signals reach this child too (BentoML's arbiter signals a worker's children, a
    # terminal's Ctrl-C the whole group); dying on them lost the rows shipped here before the worker's
    # shutdown hook could send "stop". The writer ends on "stop", or on EOF when the serving process is gone
    # (``TrafficLog`` closes its end at exit, so multiprocessing's exit-time join never waits on us).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Imports whylogs (1-2 s, paid at start rather than at the first write) and makes profiling fast.
    libraries.whylogs.apply_patches()

    writer = WindowWriter(store, flush_rows, flush_seconds, max_rows)
    while True:
        try:
            ready = connection.poll(1.0)
            message = connection.recv() if ready else ("tick",)
        except (EOFError, OSError):  # the serving process is gone: keep what it sent, then leave
            message = ("stop",)
            connection = None  # type: ignore[assignment]
        kind = message[0]
        if kind == "rows":
            writer.add(message[1])
        if kind in ("flush", "stop") or writer.due():
            try:
                written = writer.write()
                reply: tuple[Any, ...] = (
                    "ok",
                    written,
                    writer.written_rows,
                    writer.dropped_rows,
                    writer.pending_rows,
                )
            except Exception as error:
                logger.exception("writing the traffic log failed; rows kept for the next attempt")
                reply = ("error", repr(error), writer.written_rows, writer.dropped_rows, writer.pending_rows)
            if kind in ("flush", "stop") and connection is not None:
                connection.send(reply)
        if kind == "stop":
            return


class TrafficLog:
    """Scored rows queued on the request path and shipped to a ``WindowWriter`` by a background thread."""

    def __init__(
        self,
        store: ProfileStore,
        features: Sequence[str],
        model_input: Callable[[Mapping[str, Sequence[Any]]], dict[str, Any]],
        *,
        flush_seconds: float,
        ship_seconds: float = 0.5,
        ship_rows: int = 2_000,
        flush_rows: int = 50_000,
        max_rows: int = 1_000_000,
        writer_process: bool = False,
    ) -> None:
        self.store = store
        self.features = list(features)
        self.model_input = model_input
        self.ship_seconds = ship_seconds
        self.ship_rows = ship_rows
        self.writer_process = writer_process
        self._writer_args = (flush_rows, flush_seconds, max_rows)
        self._local = None if writer_process else WindowWriter(store, *self._writer_args)
        self._connection: Connection | None = None
        self._process: BaseProcess | None = None
        self._pending = PendingRows(self.features)
        self._lock = threading.Lock()
        self._ship_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.written_rows = 0
        self.dropped_rows = 0

    @property
    def pending_rows(self) -> int:
        """Rows queued here plus rows the local writer holds (a writer process reports on flush)."""
        return len(self._pending) + (self._local.pending_rows if self._local else 0)

    def record(self, batch: ScoredBatch) -> None:
        """Queue a request's rows; called on the request path, so it only appends to lists."""
        with self._lock:
            self._pending.add(batch)
            full = len(self._pending) >= self.ship_rows
        if full:
            self._wake.set()

    def start(self) -> None:
        """Start the writer process (if any) and the shipping thread (idempotent)."""
        if self.writer_process:
            self._ensure_process()
            atexit.unregister(self._release_writer)
            atexit.register(self._release_writer)
        if self._thread is None or not self._thread.is_alive():
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="traffic-log", daemon=True)
            self._thread.start()

    def _ensure_process(self) -> None:
        if self._process is not None and self._process.is_alive() and self._connection is not None:
            return
        if self._process is not None:
            self._forget_process()
        context = multiprocessing.get_context("spawn")  # not forked: no copy of the server's state
        ours, theirs = context.Pipe()
        self._process = context.Process(
            target=run_writer_process,
            args=(theirs, self.store, *self._writer_args),
            name="traffic-log-writer",
            daemon=True,
        )
        self._process.start()
        theirs.close()
        self._connection = ours

    def _release_writer(self) -> None:
        """At exit without ``close()``: closing our end lets the writer write what it holds and leave."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _forget_process(self) -> None:
        """Drop a writer whose pipe broke; the next shipment starts a new one."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        if self._process is not None:
            if self._process.is_alive():
                self._process.terminate()
            self._process.join(5)
            logger.error("traffic log writer process is gone (exit %s)", self._process.exitcode)
            self._process = None

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.ship_seconds)
            self._wake.clear()
            try:
                self.ship()
                if self._local is not None and self._local.due():
                    self._write_local()
            except Exception:  # keep going: failed rows stay queued and the error is in the log
                logger.exception("traffic log: shipping or writing failed; rows kept for the next attempt")

    def ship(self) -> int:
        """Hand the queued rows to the writer; returns how many."""
        with self._ship_lock:
            with self._lock:
                rows, self._pending = self._pending, PendingRows(self.features)
            if not len(rows):
                return 0
            try:
                columns = rows.shipped(self.model_input)
                if self._local is not None:
                    self._local.add(columns)
                else:
                    self._ensure_process()
                    assert self._connection is not None
                    self._connection.send(("rows", columns))
            except BaseException as error:
                with self._lock:  # nothing shipped: keep them, ahead of what came since, for the next attempt
                    self._pending = rows.then(self._pending)
                if isinstance(error, OSError | EOFError):
                    self._forget_process()
                raise
            return len(rows)

    def _write_local(self) -> int:
        assert self._local is not None
        try:
            return self._local.write()
        finally:
            self.written_rows, self.dropped_rows = self._local.written_rows, self._local.dropped_rows

    def flush(self) -> int:
        """Ship and write everything so far; returns the rows written now (raises if a write failed here)."""
        self.ship()
        if self._local is not None:
            return self._write_local()
        return self._ask("flush")

    def _ask(self, request: str) -> int:
        """Send the writer a request and wait for its answer (one conversation at a time on the pipe)."""
        with self._ship_lock:
            self._ensure_process()
            assert self._connection is not None
            self._connection.send((request,))
            if not self._connection.poll(REPLY_TIMEOUT_SECONDS):
                raise TimeoutError(
                    f"traffic log writer did not answer {request!r} in {REPLY_TIMEOUT_SECONDS}s"
                )
            status, written, total, dropped, pending = self._connection.recv()
        self.written_rows, self.dropped_rows = total, dropped
        if status != "ok":
            raise OSError(f"traffic log writer could not write {pending} rows: {written}")
        return written

    def close(self, timeout: float = 30.0) -> None:
        """Stop shipping, write what is left and stop the writer (the service's shutdown hook)."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.ship()
        if self._local is not None:
            self._write_local()
            return
        try:
            self._ask("stop")
        finally:
            if self._process is not None:
                self._process.join(timeout)
                self._process = None
            if self._connection is not None:
                self._connection.close()
                self._connection = None
