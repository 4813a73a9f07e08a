"""Windowed features in bounded memory: a run's events split into shards of entities, each computed on its own.

A window reads only its own entity's events, so the events of a shard of entities (a hash of the view's key)
give exactly the rows the whole history gives for those entities. ``scatter_events`` reads each source file
once and appends its rows to one file per view and shard, with the look-back history first and the new rows
after it in the order they were ingested, the order ``compute_windows`` sees in one process. A shard then reads
only its own file, and memory per shard falls with the number of shards whatever the history's length.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flows.feature_store.offline_store import count_rows
from services.stream.windows import WindowedView

NEW_COLUMN = "is_new"
# Fibonacci hashing: consecutive ids (ours are) land in different shards, and shards come out even-sized
# in expectation whatever the ids' range.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class EventSources:
    """Where a run's events are: its new rows, and the files holding the look-back ``[since, start)``."""

    new_files: Sequence[Path]
    history_files: Sequence[Path]
    since: pd.Timestamp
    start: pd.Timestamp

    def rows(self) -> int:
        """An upper bound of the events a computation reads (the history files' rows before filtering)."""
        return count_rows([*self.new_files, *self.history_files])


def shard_count(rows: int, shard_rows: int) -> int:
    """Shards needed for at most about ``shard_rows`` events each."""
    return max(1, math.ceil(rows / shard_rows))


def shard_of(keys: np.ndarray, shards: int) -> np.ndarray:
    """The shard of each entity key."""
    mixed = np.asarray(keys).astype(np.uint64) * _GOLDEN  # wraps modulo 2**64, as a hash should
    return ((mixed >> np.uint64(32)) % np.uint64(shards)).astype(np.int64)


def scatter_events(
    views: Sequence[WindowedView], sources: EventSources, shards: int, work_dir: Path
) -> dict[str, list[Path]]:
    """Write each view's events into one Parquet file per shard under ``work_dir/<view>/``; returns them by view.

    Each source file is read once, with only the columns the views read, the history filtered to the
    look-back while reading. Shards no entity falls into get no file.
    """
    columns = {
        view.name: list(dict.fromkeys(["transaction_id", "event_timestamp", view.key, *view.columns]))
        for view in views
    }
    wanted = list(dict.fromkeys(c for cs in columns.values() for c in cs))
    ts = pa.timestamp("us", tz="UTC")
    in_lookback = (pc.field("event_timestamp") >= pa.scalar(sources.since, ts)) & (
        pc.field("event_timestamp") < pa.scalar(sources.start, ts)
    )
    writers: dict[tuple[str, int], pq.ParquetWriter] = {}
    try:
        for files, is_new, where in (
            (sources.history_files, False, in_lookback),
            (sources.new_files, True, None),
        ):
            for path in files:
                table = pq.read_table(path, columns=wanted, filters=where)
                if table.num_rows == 0:
                    continue
                flag = pa.array(np.full(table.num_rows, is_new))
                for view in views:
                    part = table.select(columns[view.name]).append_column(NEW_COLUMN, flag)
                    _append_by_shard(part, view, shards, work_dir, writers)
    finally:
        for writer in writers.values():
            writer.close()
    out: dict[str, list[Path]] = {view.name: [] for view in views}
    for view_name, shard in sorted(writers):
        out[view_name].append(_shard_path(work_dir, view_name, shard))
    return out


def _append_by_shard(
    table: pa.Table,
    view: WindowedView,
    shards: int,
    work_dir: Path,
    writers: dict[tuple[str, int], pq.ParquetWriter],
) -> None:
    shard = shard_of(table.column(view.key).to_numpy(), shards)
    # A stable sort groups each shard's rows and keeps their order within it.
    order = np.argsort(shard, kind="stable")
    sorted_shards = shard[order]
    bounds = np.flatnonzero(np.diff(sorted_shards)) + 1
    grouped = table.take(pa.array(order))
    for begin, end in zip(np.r_[0, bounds], np.r_[bounds, len(order)], strict=True):
        key = (view.name, int(sorted_shards[begin]))
        if key not in writers:
            path = _shard_path(work_dir, *key)
            path.parent.mkdir(parents=True, exist_ok=True)
            writers[key] = pq.ParquetWriter(path, table.schema)
        writers[key].write_table(grouped.slice(begin, end - begin))


def _shard_path(work_dir: Path, view_name: str, shard: int) -> Path:
    return work_dir / view_name / f"shard-{shard:05d}.parquet"


def read_shard(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A shard's (new events, look-back history), as ``compute_windows`` takes them."""
    frame = pd.read_parquet(path)
    new = frame.pop(NEW_COLUMN).to_numpy()
    return frame.loc[new].reset_index(drop=True), frame.loc[~new].reset_index(drop=True)


def shard_number(path: Path) -> int:
    """The shard a file written by ``scatter_events`` holds."""
    return int(Path(path).stem.removeprefix("shard-"))
