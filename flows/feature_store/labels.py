"""Fraud labels, wherever they arrive from: the rules a labels batch is validated by, and the one reader of labels.

A label reaches the platform inline, in its transaction's row (``is_fraud`` and ``label_timestamp`` set), or on
its own, days to weeks later, as a row of a labels file (a chargeback, a confirmed-genuine mark), validated into
``<validated_dir>/labels/date=<label date>/<batch>-<i>.parquet``. The first label of a transaction wins: a labels
row for a transaction labelled before, inline or in an earlier labels batch, is quarantined. A label whose
transaction has not landed yet is kept, and applies as soon as it lands: labels and transactions are joined when
read (``read_labels``), never when written.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flows.feature_store.ingestion import as_utc
from flows.feature_store.offline_store import (
    partition_batch,
    partition_files,
    read_partitions,
    table_columns,
    write_partitions,
)
from flows.feature_store.validation import RowRule, ValidationResult, validate_batch

logger = logging.getLogger(__name__)

LABEL_COLUMNS = ["transaction_id", "is_fraud", "label_timestamp"]
INLINE = "its transaction row"


@dataclass(frozen=True)
class LabelContext:
    """What the validated store already knows about the transactions a labels batch names."""

    # By transaction_id: is_fraud, label_timestamp and where the label came from (the one that applies).
    earlier: pd.DataFrame
    # By transaction_id: the event_timestamp of each transaction already validated.
    events: pd.Series


def labels_dir(validated_dir: Path) -> Path:
    return Path(validated_dir) / "labels"


def transactions_dir(validated_dir: Path) -> Path:
    return Path(validated_dir) / "transactions"


def read_label_context(validated_dir: Path, ids: Collection[str], batch_name: str) -> LabelContext:
    """The validated transactions and labels of ``ids``; labels written by ``batch_name`` itself (a retried
    run) do not count as earlier. Reads only the rows of those ids."""
    if not len(ids):
        return LabelContext(
            earlier=pd.DataFrame(columns=["is_fraud", "label_timestamp", "source"]),
            events=pd.Series(dtype="datetime64[us, UTC]"),
        )
    wanted = pc.field("transaction_id").isin(list(ids))
    transactions = read_partitions(
        transactions_dir(validated_dir),
        columns=["transaction_id", "event_timestamp", "is_fraud", "label_timestamp"],
        where=wanted,
    )
    inline = transactions[transactions["is_fraud"].notna()].assign(source=INLINE)
    table = [
        pq.read_table(f, columns=LABEL_COLUMNS, filters=wanted)
        .to_pandas()
        .assign(source=f"labels batch {batch}")
        for f in partition_files(labels_dir(validated_dir))
        if (batch := partition_batch(f)) != batch_name
    ]
    # A labels-table row applies over an inline label of the same transaction (see read_labels).
    earlier = pd.concat([*table, inline[[*LABEL_COLUMNS, "source"]]], ignore_index=True)
    earlier = earlier.drop_duplicates("transaction_id", keep="first").set_index("transaction_id")
    events = transactions.set_index("transaction_id")["event_timestamp"]
    return LabelContext(earlier=earlier, events=events)


def label_rules(context: LabelContext) -> list[RowRule]:
    """First label wins; a label cannot arrive before its transaction happened (when the transaction is known)."""

    def labelled_before(batch: pd.DataFrame) -> pd.Series:
        earlier = context.earlier
        named = pd.Series(
            [
                f"is_fraud={int(fraud)} at {pd.Timestamp(time).isoformat()} in {source}"
                for fraud, time, source in zip(
                    earlier["is_fraud"], earlier["label_timestamp"], earlier["source"], strict=True
                )
            ],
            index=earlier.index,
            dtype=object,
        )
        return batch["transaction_id"].map(named)

    def before_event(batch: pd.DataFrame) -> pd.Series:
        event = pd.to_datetime(batch["transaction_id"].map(context.events), utc=True)
        early = batch["label_timestamp"] < event  # False where either is unknown
        return event[early].map(lambda time: time.isoformat())

    return [
        RowRule("transaction_id", "labelled before", labelled_before),
        RowRule("label_timestamp", "earlier than its transaction's event_timestamp", before_event),
    ]


def validate_labels(
    raw: pd.DataFrame,
    schema: pa.DataFrameSchema,
    *,
    validated_dir: Path,
    batch_name: str,
    now: pd.Timestamp | None = None,
) -> ValidationResult:
    """Split a labels batch into valid rows and quarantined rows with reasons, against what is validated so far."""
    ids = raw["transaction_id"].dropna().astype(str).unique() if "transaction_id" in raw.columns else []
    context = read_label_context(validated_dir, ids, batch_name)
    return validate_batch(
        raw,
        schema,
        batch_name=batch_name,
        now=now,
        order_tolerance=None,
        row_rules=label_rules(context),
    )


def write_validated_labels(valid: pd.DataFrame, validated_dir: Path, batch_name: str) -> list[Path]:
    """Valid labels into ``<validated_dir>/labels/date=<label date>/<batch>-<i>.parquet``."""
    return write_partitions(valid, labels_dir(validated_dir), batch_name, timestamp_column="label_timestamp")


def read_labels(
    validated_dir: Path,
    columns: Sequence[str] = (),
    since: pd.Timestamp | datetime | None = None,
    known_by: pd.Timestamp | datetime | None = None,
    need_ids: bool = True,
) -> pd.DataFrame:
    """One row per labelled validated transaction: ``transaction_id``, ``is_fraud`` (int64), ``label_timestamp``,
    then the transaction's ``columns`` (e.g. ``merchant_id``, ``event_timestamp``), in the transactions' order.

    The labels of ``iter_labels`` in one frame; see there for which label applies.
    """
    extra = [c for c in dict.fromkeys(columns) if c not in LABEL_COLUMNS]
    parts = list(iter_labels(validated_dir, columns, since, known_by, need_ids))
    if not parts:
        empty = _empty_labels(extra)
        return empty if need_ids else empty.drop(columns="transaction_id")
    return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]


def iter_labels(
    validated_dir: Path,
    columns: Sequence[str] = (),
    since: pd.Timestamp | datetime | None = None,
    known_by: pd.Timestamp | datetime | None = None,
    need_ids: bool = True,
) -> Iterator[pd.DataFrame]:
    """The labelled validated transactions one transactions file at a time, so a reader of a long history holds
    one file's labels (and whatever it keeps of them), never the history's.

    A transaction's label is its row in the labels table when it has one (only a label that landed before its
    transaction can meet an inline label too, and it came first), else its inline label. A label whose transaction
    has not landed is left out until it lands; one earlier than its transaction's event (which could not be checked
    when it landed first) is left out with a warning. ``since`` keeps transactions whose ``event_timestamp`` is at
    or after it; ``known_by`` keeps labels whose ``label_timestamp`` is at or before it. Without ``need_ids`` (and
    without a labels table) the frames carry no ``transaction_id``.
    """
    since = None if since is None else as_utc(since)
    known_by = None if known_by is None else as_utc(known_by)
    extra = [c for c in dict.fromkeys(columns) if c not in LABEL_COLUMNS]
    wanted = list(dict.fromkeys([*LABEL_COLUMNS, "event_timestamp", *extra]))
    table_dir = transactions_dir(validated_dir)
    available = table_columns(table_dir)
    if not available:
        return
    if missing := [c for c in wanted if c not in available]:
        raise ValueError(
            f"validated transactions in {table_dir} lack column(s) {', '.join(map(repr, missing))}: "
            "run the feature pipeline on raw files of the documented schema"
        )
    table = read_partitions(
        labels_dir(validated_dir), columns=LABEL_COLUMNS, since=since, timestamp_column="label_timestamp"
    )
    where = None
    if table.empty:
        # Inline labels only: unlabelled rows are dropped while reading, and ids are not read when not needed.
        if not need_ids:
            wanted.remove("transaction_id")
        where = pc.field("is_fraud").is_valid() & pc.field("label_timestamp").is_valid()
        if known_by is not None:
            where &= pc.field("label_timestamp") <= _utc_scalar(known_by)
    else:
        table = table.drop_duplicates("transaction_id", keep="last").reset_index(drop=True)
        table["label_timestamp"] = pd.to_datetime(table["label_timestamp"], utc=True)
    table_ids = pd.Index(table["transaction_id"]) if len(table) else None
    kept = [c for c in [*LABEL_COLUMNS, *extra] if c in wanted]
    early: list[str] = []
    for path in partition_files(table_dir, since):
        frame = pq.read_table(path, columns=wanted, filters=where).to_pandas()
        frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
        frame["label_timestamp"] = pd.to_datetime(frame["label_timestamp"], utc=True)
        frame["is_fraud"] = frame["is_fraud"].astype("float64")
        if table_ids is not None:
            frame, too_early = _apply_label_table(frame, table, table_ids)
            early.extend(too_early)
        known = frame["is_fraud"].notna() & frame["label_timestamp"].notna()
        if since is not None:
            known &= frame["event_timestamp"] >= since
        if known_by is not None:
            known &= frame["label_timestamp"] <= known_by
        if known.any():
            yield frame.loc[known, kept].astype({"is_fraud": "int64"}).reset_index(drop=True)
    if early:
        logger.warning(
            "%d label(s) in %s are earlier than their transaction's event_timestamp (they landed before it, so "
            "ingestion could not check them) and are ignored: %s",
            len(early),
            labels_dir(validated_dir),
            ", ".join(early[:5]),
        )


@dataclass(frozen=True)
class LabelReader:
    """``iter_labels`` with its arguments bound, for a task that reads the labels file by file where it runs (a
    thread, a Dask worker) instead of receiving them whole."""

    validated_dir: Path
    columns: tuple[str, ...] = ()
    known_by: pd.Timestamp | None = None
    need_ids: bool = True

    def __iter__(self) -> Iterator[pd.DataFrame]:
        return iter_labels(self.validated_dir, self.columns, known_by=self.known_by, need_ids=self.need_ids)


def _utc_scalar(value: pd.Timestamp) -> object:
    """A timestamp as an Arrow scalar comparable with the tables' ``timestamp[us, UTC]`` columns."""
    import pyarrow

    return pyarrow.scalar(value, pyarrow.timestamp("us", tz="UTC"))


def _apply_label_table(
    frame: pd.DataFrame, table: pd.DataFrame, table_ids: pd.Index
) -> tuple[pd.DataFrame, list[str]]:
    """``frame`` with the labels of the labels table in place of inline ones, and the ids of labels ignored for
    being earlier than their transaction."""
    found = table_ids.get_indexer(frame["transaction_id"])
    rows = np.flatnonzero(found >= 0)
    if not len(rows):
        return frame, []
    label_time = table["label_timestamp"].iloc[found[rows]].reset_index(drop=True)
    early = (label_time < frame["event_timestamp"].iloc[rows].reset_index(drop=True)).to_numpy()
    ignored = frame["transaction_id"].iloc[rows[early]].tolist()
    rows, label_time = rows[~early], label_time[~early]
    fraud = frame["is_fraud"].to_numpy(copy=True)
    fraud[rows] = table["is_fraud"].to_numpy(dtype="float64")[found[rows]]
    times = frame["label_timestamp"].array.copy()
    times[rows] = label_time.array.astype(times.dtype)
    return frame.assign(is_fraud=fraud, label_timestamp=times), ignored


def _empty_labels(extra: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "transaction_id": pd.Series(dtype=object),
            "is_fraud": pd.Series(dtype="int64"),
            "label_timestamp": pd.Series(dtype="datetime64[us, UTC]"),
            **{c: pd.Series(dtype=object) for c in extra},
        }
    )
