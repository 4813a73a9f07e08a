"""Date-partitioned Parquet tables: the validated data and Feast's offline store.

Layout: ``<table_dir>/date=YYYY-MM-DD/<batch>-0.parquet`` (``date=YYYY`` for tables written by year). A batch writes one file per day it touches, named
after the batch, so writing the same batch again replaces its files instead of duplicating rows. A batch written
in parts (chunks of a large file, shards of a computation) names each part's files ``<batch>-<part>_0.parquet``;
``remove_batch`` clears a batch's files first, so a re-run in fewer parts leaves none of the old ones behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq


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
    date = pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32()), pa.array(days.strftime(fmt)))
    table = pa.Table.from_pandas(frame, preserve_index=False).append_column("date", date)
    written: list[Path] = []
    pq.write_to_dataset(
        table,
        root_path=str(table_dir),
        partition_cols=["date"],
        basename_template=f"{batch_name}-{{i}}.parquet"
        if part is None
        else f"{batch_name}-{part:05d}_{{i}}.parquet",
        # Same batch, same file names: a re-run replaces its own files and leaves other batches alone.
        existing_data_behavior="overwrite_or_ignore",
        file_visitor=lambda written_file: written.append(Path(written_file.path)),
    )
    return written


def read_partitions(
    table_dir: Path,
    columns: list[str] | None = None,
    since: pd.Timestamp | None = None,
    timestamp_column: str = "event_timestamp",
    where: pc.Expression | None = None,
) -> pd.DataFrame:
    """Rows of a partitioned table, optionally only those at or after ``since`` (whole days are skipped).

    ``where`` (a pyarrow expression, e.g. ``pc.field("transaction_id").isin(ids)``) drops rows while reading,
    before they become pandas objects.
    """
    files = partition_files(table_dir, since)
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


def max_timestamp(table_dir: Path, timestamp_column: str = "event_timestamp") -> pd.Timestamp | None:
    """The newest timestamp in a partitioned table (reads only the last day's partition)."""
    files = partition_files(table_dir)
    if not files:
        return None
    last_day = files[-1].parent
    values = pd.concat(
        [pq.read_table(f, columns=[timestamp_column]).to_pandas() for f in last_day.glob("*.parquet")]
    )[timestamp_column]
    return values.max()
