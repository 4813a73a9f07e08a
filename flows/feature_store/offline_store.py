"""Date-partitioned Parquet tables: the validated data and Feast's offline store.

Layout: ``<table_dir>/date=YYYY-MM-DD/<batch>-0.parquet`` (``date=YYYY`` for tables written by year). A batch writes one file per day it touches, named
after the batch, so writing the same batch again replaces its files instead of duplicating rows. A batch written
in parts (chunks of a large file, shards of a computation) names each part's files ``<batch>-<part>_0.parquet``;
``remove_batch`` clears a batch's files first, so a re-run in fewer parts leaves none of the old ones behind.
"""

from __future__ import annotations

import shutil
from collections.abc import Collection
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from model_store.atomic_files import write_atomically


def write_partitions(
    frame: pd.DataFrame,
    table_dir: Path,
    batch_name: str,
    timestamp_column: str = "event_timestamp",
    period: Literal["day", "year"] = "day",
    part: int | None = None,
) -> list[Path]:
    """Write ``frame`` into daily (or, for slowly changing tables spanning years, yearly) partitions."""
    if frame.empty:
        return []
    # Format each distinct period once: formatting a million timestamps costs seconds.
    floor, fmt = ("D", "%Y-%m-%d") if period == "day" else ("Y", "%Y")
    periods = (
        frame[timestamp_column].dt.tz_convert("UTC").dt.tz_localize(None).dt.to_period(floor).dt.start_time
    )
    codes, days = pd.factorize(periods)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    # Rows grouped by period (stable, so each file keeps the frame's order); one file per period.
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(days) + 1))
    written: list[Path] = []
    name = f"{batch_name}-0.parquet" if part is None else f"{batch_name}-{part:05d}_0.parquet"
    for code, day in enumerate(days.strftime(fmt)):
        rows = table.take(pa.array(order[bounds[code] : bounds[code + 1]]))
        # Same batch (and part), same file name: a re-run replaces its own file and leaves other batches alone.
        # Written aside and renamed: a reader (Feast, the next run) never sees half a file, even after a kill.
        path = Path(table_dir) / f"date={day}" / name
        written.append(write_atomically(path, lambda target, rows=rows: pq.write_table(rows, target)))
    return written


def replace_table(
    frame: pd.DataFrame, table_dir: Path, batch_name: str, period: Literal["day", "year"] = "year"
) -> list[Path]:
    """Replace a whole table (a snapshot) with ``frame``: written beside it, then swapped in by two renames, so
    a reader finds the old table or the new one, never a mix; a kill leaves hidden folders the next call clears.
    """
    table_dir = Path(table_dir)
    fresh, stale = (table_dir.with_name(f".{table_dir.name}.{suffix}") for suffix in ("new", "old"))
    for leftover in (fresh, stale):
        shutil.rmtree(leftover, ignore_errors=True)
    written = write_partitions(frame, fresh, batch_name, period=period)
    if table_dir.exists():
        table_dir.rename(stale)
    fresh.rename(table_dir)
    shutil.rmtree(stale, ignore_errors=True)
    return [table_dir / path.relative_to(fresh) for path in written]


def read_partitions(
    table_dir: Path,
    columns: list[str] | None = None,
    since: pd.Timestamp | None = None,
    timestamp_column: str = "event_timestamp",
    where: pc.Expression | None = None,
    skip_batches: Collection[str] = (),
) -> pd.DataFrame:
    """Rows of a partitioned table, optionally only those at or after ``since`` (whole days are skipped).

    ``where`` (a pyarrow expression, e.g. ``pc.field("transaction_id").isin(ids)``) drops rows while reading,
    before they become pandas objects; ``skip_batches`` leaves out the files those batches wrote.
    """
    files = [f for f in partition_files(table_dir, since) if partition_batch(f) not in skip_batches]
    if not files:
        return pd.DataFrame(columns=columns or [])
    frame = pd.concat(
        [pq.read_table(f, columns=columns, filters=where).to_pandas() for f in files], ignore_index=True
    )
    if since is not None:
        frame = frame[frame[timestamp_column] >= since].reset_index(drop=True)
    return frame


def partition_files(table_dir: Path, since: pd.Timestamp | None = None) -> list[Path]:
    """Files of a partitioned table in date order; with ``since``, only the partitions that can hold such rows."""
    if not table_dir.exists():
        return []
    first_day = since.strftime("%Y-%m-%d") if since is not None else ""
    return sorted(
        f
        for part in table_dir.glob("date=*")
        if part.name.removeprefix("date=") >= first_day
        for f in part.glob("*.parquet")
    )


def partition_batch(path: Path) -> str:
    """The batch that wrote a partition file (``<batch>-<i>.parquet``)."""
    return Path(path).stem.rsplit("-", 1)[0]


def batch_files(table_dir: Path, batch_names: set[str] | frozenset[str]) -> list[Path]:
    """The files of a partitioned table that the named batches wrote, in date order."""
    return [f for f in partition_files(table_dir) if partition_batch(f) in batch_names]


def remove_batch(table_dir: Path, batch_name: str) -> int:
    """Delete every file a batch wrote to a partitioned table; returns how many."""
    files = batch_files(table_dir, {batch_name})
    for f in files:
        f.unlink()
    return len(files)


def count_rows(files: list[Path]) -> int:
    """Rows in Parquet files, from their footers."""
    return sum(pq.read_metadata(f).num_rows for f in files)


def table_columns(table_dir: Path) -> list[str]:
    """The columns of a partitioned table, as its first file holds them (empty when it has no file yet)."""
    files = partition_files(table_dir)
    return pq.read_schema(files[0]).names if files else []


def max_timestamp(
    table_dir: Path, timestamp_column: str = "event_timestamp", skip_batches: Collection[str] = ()
) -> pd.Timestamp | None:
    """The newest timestamp in a partitioned table (reads only the last day's partition), leaving out the files
    ``skip_batches`` wrote."""
    files = [f for f in partition_files(table_dir) if partition_batch(f) not in skip_batches]
    if not files:
        return None
    last_day = files[-1].parent
    values = pd.concat(
        [pq.read_table(f, columns=[timestamp_column]).to_pandas() for f in files if f.parent == last_day]
    )[timestamp_column]
    return values.max()
