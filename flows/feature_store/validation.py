"""Validation of raw batches: every row ends either valid or quarantined with every rule it broke.

Generic over the pandera schema it is given (``flows/fraud_data/schema.py`` holds ours). The rules that need
context (ids of earlier batches, reference tables, the time of validation, file order) are added to a copy
of the schema as pandera checks, so one lazy validation reports every failure per row.

A batch too large for memory is validated in chunks, in file order, each chunk given what the rows above it
decide: the id conflicts of the whole file (``find_id_conflicts``, computed in DuckDB, which spills to disk),
the latest timestamp so far and the chunk's first row number. Chunks then quarantine exactly the rows, with
exactly the reasons, the whole batch would.
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow

from flows.feature_store.ingestion import as_utc, cast_column, missing_columns, parse_columns
from model_store.atomic_files import write_atomically

logger = logging.getLogger(__name__)

REASON_COLUMN = "quarantine_reason"
# The quarantined rows keep their position in the batch (0-based, file order) under this name.
ROW_COLUMN = "batch_row"
ORDER_TOLERANCE = pd.Timedelta("1h")
FUTURE_TOLERANCE = pd.Timedelta("5min")
DUCKDB_MEMORY = "2GB"


class BatchRejectedError(RuntimeError):
    """A batch whose share of invalid rows is above the configured threshold."""


@dataclass(frozen=True)
class RowRule:
    """A rule whose reason differs per row (it names another table's value): ``<column>: <name> (<detail>)``.

    ``details`` receives the typed batch (``parse_columns``'s frame: nulls where a value is missing or did not
    parse) and returns, for each row, what breaks the rule, or None where the row keeps it. Rows count towards
    ``reason_counts`` under ``<column>: <name>``, whatever their detail.
    """

    column: str
    name: str
    details: Callable[[pd.DataFrame], pd.Series]


@dataclass(frozen=True)
class ValidationResult:
    """A batch split in two: rows fit for downstream and rows quarantined with their reasons."""

    batch_name: str
    valid: pd.DataFrame
    quarantined: pd.DataFrame
    invalid_fraction: float
    reason_counts: dict[str, int]
    # The newest timestamp at or before the validation time, of this batch and those before it: a chunk's
    # ``latest_before`` for the next one.
    latest: pd.Timestamp | None = None

    def summary(self) -> dict[str, object]:
        """Counts for logs and the batch manifest (plain JSON types)."""
        return {
            "rows": len(self.valid) + len(self.quarantined),
            "valid": len(self.valid),
            "quarantined": len(self.quarantined),
            "invalid_fraction": self.invalid_fraction,
            "reason_counts": dict(self.reason_counts),
        }


def validate_batch(
    df: pd.DataFrame,
    schema: pa.DataFrameSchema,
    *,
    batch_name: str,
    known_ids: Collection | None = None,
    id_column: str | None = None,
    references: Mapping[str, Collection] | None = None,
    timestamp_column: str | None = None,
    now: pd.Timestamp | None = None,
    order_tolerance: pd.Timedelta | None = ORDER_TOLERANCE,
    future_tolerance: pd.Timedelta = FUTURE_TOLERANCE,
    row_rules: Sequence[RowRule] = (),
    first_row: int = 0,
    latest_before: pd.Timestamp | None = None,
    duplicates: np.ndarray | None = None,
) -> ValidationResult:
    """Split ``df`` into valid rows (the schema's columns and types) and quarantined rows with reasons.

    Besides the schema's own rules: ``id_column`` values in ``known_ids`` (earlier batches) are rejected;
    each ``references`` column must hold a value of its set (e.g. known customer ids); columns whose schema
    metadata says ``not_in_future``, and ``timestamp_column``, must not be later than ``now`` (default: the
    current time) plus ``future_tolerance``; ``timestamp_column`` must not fall more than ``order_tolerance``
    (None: not checked) behind the latest earlier timestamp in file order; each of ``row_rules`` holds.

    A chunk of a larger batch passes its ``first_row`` in the batch, the ``latest`` of the chunk before it as
    ``latest_before``, and ``duplicates``, which of its rows repeat an id of an earlier row of the batch (its
    slice of ``find_id_conflicts``'s answer): they replace the schema's own uniqueness check of ``id_column``.
    """
    if missing := missing_columns(df, schema):
        raise ValueError(f"Batch {batch_name}: missing required column(s) {', '.join(missing)}")
    if known_ids is not None and id_column is None:
        raise ValueError("validate_batch: known_ids needs id_column, the column they are ids of")
    named = {id_column, timestamp_column, *(references or {}), *(rule.column for rule in row_rules)} - {None}
    if unknown := sorted(named - set(schema.columns)):
        raise ValueError(f"validate_batch: {', '.join(unknown)} not a column of the {schema.name} schema")
    incoming = df.reset_index(drop=True)
    typed, unparsable = parse_columns(incoming, schema)
    now = pd.Timestamp.now(tz="UTC") if now is None else as_utc(now)
    if duplicates is not None and id_column is None:
        raise ValueError("validate_batch: duplicates needs id_column, the column they are ids of")
    checked = add_context_checks(
        schema,
        known_ids=known_ids,
        id_column=id_column,
        references=references or {},
        timestamp_column=timestamp_column,
        latest=now + future_tolerance,
        order_tolerance=order_tolerance,
        latest_before=latest_before,
        duplicates=duplicates,
    )
    cases = pd.concat(
        [
            unparsable_reasons(unparsable, schema),
            failed_checks(checked, typed, unparsable, batch_name=batch_name),
            *(row_rule_reasons(rule, typed) for rule in row_rules),
        ],
        ignore_index=True,
    )
    reasons = join_reasons(cases, list(schema.columns))

    rejected = incoming.index.isin(reasons.index)
    quarantined = incoming.loc[rejected].assign(**{REASON_COLUMN: reasons})
    quarantined.index = quarantined.index + first_row
    quarantined.index.name = ROW_COLUMN
    valid = typed.loc[~rejected].reset_index(drop=True)
    for name, column in schema.columns.items():
        valid[name] = cast_column(valid[name], column.dtype.type)
    counts = count_reasons(cases, list(schema.columns))
    result = ValidationResult(
        batch_name=batch_name,
        valid=valid,
        quarantined=quarantined,
        invalid_fraction=len(quarantined) / len(incoming) if len(incoming) else 0.0,
        reason_counts=dict(counts.most_common()),
        latest=_latest_settled(typed, timestamp_column, now + future_tolerance, latest_before),
    )
    logger.info("Batch %s: %d valid, %d quarantined", batch_name, len(valid), len(quarantined))
    return result


def validate_chunks(
    chunks: Iterable[pd.DataFrame],
    schema: pa.DataFrameSchema,
    *,
    conflicts: IdConflicts,
    id_column: str,
    **options: object,
) -> Iterator[ValidationResult]:
    """``validate_batch`` over one batch's chunks in file order, each told what the rows above it decide.

    ``conflicts`` is ``find_id_conflicts``'s answer for the whole batch; ``options`` are ``validate_batch``'s.
    """
    rows, latest = 0, None
    for chunk in chunks:
        result = validate_batch(
            chunk,
            schema,
            known_ids=conflicts.known,
            id_column=id_column,
            first_row=rows,
            latest_before=latest,
            duplicates=conflicts.duplicates[rows : rows + len(chunk)],
            **options,  # type: ignore[arg-type]
        )
        rows += len(chunk)
        latest = result.latest
        yield result


@dataclass
class ChunkTally:
    """A batch validated chunk by chunk, its valid rows stored as they come: the batch's counts and quarantine."""

    batch_name: str
    rows: int = 0
    valid_rows: int = 0
    latest: pd.Timestamp | None = None
    quarantined: list[pd.DataFrame] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)

    def add(self, result: ValidationResult) -> None:
        self.rows += len(result.valid) + len(result.quarantined)
        self.valid_rows += len(result.valid)
        self.latest = result.latest
        self.quarantined.append(result.quarantined)
        self.counts.update(result.reason_counts)

    def result(self) -> ValidationResult:
        """The batch's result; its ``valid`` holds no columns, only as many rows as were stored."""
        quarantined = (
            pd.concat(self.quarantined) if self.quarantined else pd.DataFrame(columns=[REASON_COLUMN])
        )
        return ValidationResult(
            self.batch_name,
            pd.DataFrame(index=pd.RangeIndex(self.valid_rows)),
            quarantined,
            len(quarantined) / self.rows if self.rows else 0.0,
            dict(self.counts.most_common()),
            self.latest,
        )


def add_context_checks(
    schema: pa.DataFrameSchema,
    *,
    known_ids: Collection | None,
    id_column: str | None,
    references: Mapping[str, Collection],
    timestamp_column: str | None,
    latest: pd.Timestamp,
    order_tolerance: pd.Timedelta | None,
    latest_before: pd.Timestamp | None = None,
    duplicates: np.ndarray | None = None,
) -> pa.DataFrameSchema:
    """A copy of ``schema`` with the rules that need context, checking the frame ``parse_columns`` returns."""
    checks = {name: list(column.checks) for name, column in schema.columns.items()}
    updates: dict[str, dict[str, object]] = {}
    if known_ids is not None and id_column is not None:
        earlier = known_ids if isinstance(known_ids, set | frozenset) else set(known_ids)
        checks[id_column].append(
            pa.Check(lambda s: ~s.isin(earlier), name="not_ingested_before", error="already ingested")
        )
    for name, ids in references.items():
        checks[name].append(
            pa.Check(
                partial(is_listed, as_lookup(ids)),
                name="known_reference",
                # customer_id -> "unknown customer"
                error=f"unknown {name.removesuffix('_id')}",
            )
        )
    timed = {name for name, column in schema.columns.items() if (column.metadata or {}).get("not_in_future")}
    for name in sorted(timed | ({timestamp_column} - {None}), key=list(schema.columns).index):
        checks[name].append(
            pa.Check(
                lambda s: s <= latest,
                name="not_in_future",
                error=f"in the future (after {latest.isoformat()})",
            )
        )
    if timestamp_column is not None and order_tolerance is not None:
        checks[timestamp_column].append(
            pa.Check(
                in_order(latest, order_tolerance, latest_before),
                name="in_order",
                error=f"out of order (more than {_duration(order_tolerance)} before an earlier row)",
            )
        )
    if duplicates is not None and id_column is not None:
        repeated = np.asarray(duplicates, dtype=bool)
        # Stands in for pandera's own uniqueness check across chunks: same name, and last, where pandera
        # reports its own. Pandera hands the check the present ids only (rows are numbered from 0).
        checks[id_column].append(
            pa.Check(
                lambda s: pd.Series(~repeated[s.index.to_numpy()], index=s.index),
                name="unique",
                error="field_uniqueness",
            )
        )
        updates[id_column] = {"unique": False}
    for name, column_checks in checks.items():
        updates.setdefault(name, {})["checks"] = column_checks
    for name, column in schema.columns.items():
        # parse_columns gives integers as nullable Int64, so a missing id is a not_nullable case, not a dtype error.
        if pd.api.types.is_integer_dtype(column.dtype.type):
            updates[name]["dtype"] = "Int64"
    return schema.update_columns(updates)


def in_order(
    latest: pd.Timestamp, tolerance: pd.Timedelta, latest_before: pd.Timestamp | None = None
) -> Callable[[pd.Series], pd.Series]:
    """A check: each timestamp is at most ``tolerance`` before the latest one of the rows above it (including
    ``latest_before``, the latest of the chunks above)."""

    def check(timestamps: pd.Series) -> pd.Series:
        # Future timestamps are quarantined on their own and must not make every later row look late.
        settled = timestamps.where(timestamps <= latest)
        running_max = settled.cummax().ffill().shift(1)
        if latest_before is not None:
            running_max = running_max.where(running_max >= latest_before, latest_before)
        return ~(timestamps < running_max - tolerance)

    return check


def _latest_settled(
    typed: pd.DataFrame, timestamp_column: str | None, latest: pd.Timestamp, before: pd.Timestamp | None
) -> pd.Timestamp | None:
    if timestamp_column is None:
        return None
    times = typed[timestamp_column]
    newest = times.where(times <= latest).max()
    candidates = [t for t in (newest, before) if t is not None and not pd.isna(t)]
    return max(candidates) if candidates else None


@dataclass(frozen=True)
class IdConflicts:
    """What the ids of a whole batch decide row by row: repeats of an earlier row's id, ids stored before."""

    duplicates: np.ndarray
    known: set[str]


def find_id_conflicts(ids: pyarrow.Array, stored_files: Sequence[Path], stored_column: str) -> IdConflicts:
    """Which rows repeat the id of an earlier row (the first stays valid) and which ids ``stored_files`` hold.

    Computed by DuckDB, which spills to disk, so neither the batch's ids nor the stored ones (a hundred
    million strings take gigabytes as Python objects) need to fit in memory.
    """
    import duckdb

    ids = ids.cast(pyarrow.string()) if not pyarrow.types.is_string(ids.type) else ids
    batch = pyarrow.table({"id": ids, "row": pyarrow.array(np.arange(len(ids), dtype=np.int64))})
    with duckdb.connect() as con:
        # Beyond this DuckDB spills to disk: the pipeline's other stages need the rest of the memory.
        con.execute(f"SET memory_limit = '{DUCKDB_MEMORY}'")
        con.execute(f"SET temp_directory = '{Path(tempfile.gettempdir()) / 'rtml-duckdb'}'")
        con.register("batch", batch)
        repeated = con.execute(
            "SELECT row FROM batch WHERE id IS NOT NULL "
            "QUALIFY row_number() OVER (PARTITION BY id ORDER BY row) > 1"
        ).fetchnumpy()["row"]
        known: set[str] = set()
        if stored_files:
            # The batch's ids are the side DuckDB hashes and the stored ones stream past them, so the hash is the
            # batch's size whatever the history (0.8 s against 3.1 s per 10 M-id file with 90 M ids stored).
            stored = con.execute(
                f"SELECT DISTINCT {stored_column} FROM read_parquet(?) "
                f"WHERE {stored_column} IN (SELECT id FROM batch)",
                [[str(f) for f in stored_files]],
            ).fetchall()
            known = {row[0] for row in stored}
    duplicates = np.zeros(len(ids), dtype=bool)
    duplicates[repeated] = True
    return IdConflicts(duplicates, known)


def as_lookup(ids: Collection) -> pd.Index:
    """Ids to look values up in: a unique ``pd.Index`` builds its hash table once and keeps it, so the chunks of
    a batch share it (a set was converted to an array on every lookup: a second per million rows)."""
    if isinstance(ids, pd.Index) and ids.is_unique:
        return ids
    return pd.Index(pd.unique(np.asarray(list(ids) if isinstance(ids, set | frozenset) else ids)))


def is_listed(lookup: pd.Index, values: pd.Series) -> pd.Series:
    """Whether each value is one of ``lookup``'s; a null is left to the column's nullable rule."""
    present = values.notna().to_numpy()
    listed = ~present
    kept = values[present]
    if pd.api.types.is_extension_array_dtype(kept.dtype) and kept.dtype.kind in "iuf":
        kept = kept.to_numpy(kept.dtype.numpy_dtype)  # a masked array's hash lookups take five times as long
    listed[present] = lookup.get_indexer(kept) >= 0
    return pd.Series(listed, index=values.index)


def count_reasons(cases: pd.DataFrame, columns: list[str]) -> Counter:
    """Rows per reason, a row counted once per reason; a ``RowRule``'s reasons count under its rule."""
    cases = _in_column_order(cases, columns)
    counted = cases["reason"]
    if "counted_as" in cases.columns:
        counted = cases["counted_as"].fillna(counted)
    pairs = dict.fromkeys(zip(cases["index"].astype(int), counted, strict=True))
    return Counter(reason for _, reason in pairs)


def unparsable_reasons(unparsable: pd.DataFrame, schema: pa.DataFrameSchema) -> pd.DataFrame:
    """(index, column, reason) rows for the values that did not parse to their column's type."""
    if not unparsable.to_numpy().any():
        return pd.DataFrame(columns=["index", "column", "reason"])
    cells = unparsable.stack()
    cells = cells[cells]
    rows = cells.index.get_level_values(0)
    columns = cells.index.get_level_values(1)
    reasons = [f"{c}: not parsable as {schema.columns[c].dtype}" for c in columns]
    return pd.DataFrame(
        {"index": rows, "column": columns, "reason": reasons}, columns=["index", "column", "reason"]
    )


def failed_checks(
    schema: pa.DataFrameSchema, typed: pd.DataFrame, unparsable: pd.DataFrame, *, batch_name: str
) -> pd.DataFrame:
    """(index, column, reason) rows for every check of ``schema`` that a row of ``typed`` fails."""
    try:
        schema.validate(typed, lazy=True)
    except pa.errors.SchemaErrors as exc:
        return pandera_reasons(exc.failure_cases, unparsable, batch_name=batch_name)
    return pd.DataFrame(columns=["index", "column", "reason"])


def row_rule_reasons(rule: RowRule, typed: pd.DataFrame) -> pd.DataFrame:
    """(index, column, reason, counted_as) rows for the rows of ``typed`` that break ``rule``."""
    details = rule.details(typed).reindex(typed.index)
    broken = details[details.notna()]
    return pd.DataFrame(
        {
            "index": broken.index,
            "column": rule.column,
            "reason": [f"{rule.column}: {rule.name} ({detail})" for detail in broken],
            "counted_as": f"{rule.column}: {rule.name}",
        },
        columns=["index", "column", "reason", "counted_as"],
    )


def _in_column_order(cases: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    position = {name: i for i, name in enumerate(columns)}
    cases = cases.assign(position=cases["column"].map(position).fillna(len(position)))
    # Within a column by reason: pandera lists one row's failed checks in no fixed order.
    return cases.sort_values(["index", "position", "reason"], kind="stable")


def join_reasons(cases: pd.DataFrame, columns: list[str]) -> pd.Series:
    """One "column: check; ..." string per failing row, indexed by row, reasons in schema column order."""
    cases = _in_column_order(cases, columns)
    reasons = cases.groupby("index", sort=True)["reason"].agg(lambda rs: "; ".join(dict.fromkeys(rs)))
    reasons.index = reasons.index.astype(int)
    return reasons.rename(REASON_COLUMN).astype(object)


def pandera_reasons(
    failure_cases: pd.DataFrame, unparsable: pd.DataFrame, *, batch_name: str
) -> pd.DataFrame:
    """Pandera's failure cases as (index, column, reason) rows; raises on a failure no row can be blamed for."""
    rowless = failure_cases[failure_cases["index"].isna()]
    if not rowless.empty:
        problems = "; ".join(f"{c.column}: {c.check} ({c.failure_case})" for c in rowless.itertuples())
        raise ValueError(f"Batch {batch_name}: failures not tied to a row: {problems}")
    cases = failure_cases.assign(index=failure_cases["index"].astype(int))
    # An unparsable value was nulled by parsing: its not_nullable case repeats the reason already given.
    unparsed = {(i, name) for name in unparsable.columns for i in unparsable.index[unparsable[name]]}
    repeated = [
        check == "not_nullable" and (i, column) in unparsed
        for i, column, check in zip(cases["index"], cases["column"], cases["check"], strict=True)
    ]
    cases = cases.loc[[not r for r in repeated]]
    # Frame-wide checks name their columns in their message; pandera repeats them once per column.
    frame_wide = cases["schema_context"] == "DataFrameSchema"
    reason = (
        cases["check"]
        .astype(str)
        .where(frame_wide, cases["column"].astype(str) + ": " + cases["check"].astype(str))
    )
    column = cases["column"].where(~frame_wide, reason.str.split(":").str[0])
    return pd.DataFrame({"index": cases["index"], "column": column, "reason": reason})


def write_quarantine(result: ValidationResult, quarantine_dir: Path, batch_name: str) -> Path | None:
    """Write the quarantined rows as text (so unparsable values survive) to ``<quarantine_dir>/<batch>.parquet``.

    Returns None when nothing was quarantined, after removing that batch's file from an earlier run.
    """
    if Path(batch_name).name != batch_name or not batch_name:
        raise ValueError(f"write_quarantine: batch name {batch_name!r} must be a plain file name")
    path = Path(quarantine_dir) / f"{batch_name}.parquet"
    if result.quarantined.empty:
        if path.exists():
            logger.info("Batch %s: no rows quarantined, removing the stale %s", batch_name, path)
            path.unlink()
        return None
    text = result.quarantined.astype("string").reset_index()
    write_atomically(path, lambda partial: text.to_parquet(partial, index=False))
    return path


def check_invalid_share(result: ValidationResult, max_fraction: float) -> None:
    """Raise ``BatchRejectedError`` when the batch's invalid share is above ``max_fraction``."""
    if result.invalid_fraction <= max_fraction:
        return
    top = ", ".join(f"{reason} ({count})" for reason, count in list(result.reason_counts.items())[:5])
    rows = len(result.valid) + len(result.quarantined)
    raise BatchRejectedError(
        f"Batch {result.batch_name} rejected: {len(result.quarantined)} of {rows} rows "
        f"({result.invalid_fraction:.2%}) failed validation, above max_invalid_fraction={max_fraction} "
        f"({max_fraction:.2%}). Top reasons: {top}."
    )


def _duration(delta: pd.Timedelta) -> str:
    # "0 days 01:00:00" reads worse than "01:00:00" in a reason.
    return str(delta).removeprefix("0 days ")
