"""Raw batches in: CSV or Parquet files read into typed frames, and the manifest of batches already ingested.

Generic over the schema it is given (``flows/fraud_data/schema.py`` holds ours). A value that does not parse
never fails a file: its column is returned as read, so validation can quarantine the row with the original
value and a reason.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow
import pyarrow.parquet as pq

from model_store.atomic_files import write_atomically

logger = logging.getLogger(__name__)

RAW_SUFFIXES = (".parquet", ".csv")
# Floats at or beyond this magnitude do not fit an int64.
_INT64_LIMIT = float(2**63)


class RawFileError(ValueError):
    """A raw file that cannot be read as a table of the expected schema."""


@dataclass(frozen=True)
class RawBatch:
    """One transactions file waiting to be ingested, identified by the sha256 of its bytes."""

    path: Path
    name: str
    sha256: str


def missing_columns(df: pd.DataFrame, schema: pa.DataFrameSchema) -> list[str]:
    """The schema's required columns that ``df`` lacks, in schema order."""
    return [name for name, column in schema.columns.items() if column.required and name not in df.columns]


def parse_columns(df: pd.DataFrame, schema: pa.DataFrameSchema) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Convert the schema's columns to their types; returns (typed frame, mask of values that did not parse).

    The typed frame has the schema's columns in schema order, the same index as ``df``, and a null wherever a
    value is missing or did not parse. Integer columns come back as nullable ``Int64`` so that a null or
    unparsable id can be reported rather than failing the cast; absent optional columns come back all-null.
    """
    if missing := missing_columns(df, schema):
        raise ValueError(f"missing required column(s): {', '.join(missing)}")
    typed: dict[str, pd.Series] = {}
    unparsable: dict[str, pd.Series] = {}
    for name, column in schema.columns.items():
        source = df[name] if name in df.columns else pd.Series(None, index=df.index, dtype=object)
        typed[name], unparsable[name] = parse_series(source, column.dtype.type)
    return pd.DataFrame(typed, index=df.index), pd.DataFrame(unparsable, index=df.index)


def parse_series(values: pd.Series, dtype: object) -> tuple[pd.Series, pd.Series]:
    """Convert one column to ``dtype`` (timestamps to UTC); returns (converted, mask of values that did not parse)."""
    present = values.notna()
    if _is_text(dtype):
        # Any present value is kept as its text; nulls become None so pandera sees them as missing.
        converted = values.astype(object)
        if not present.all():
            converted = converted.where(present, None)
        # Text read as text (all of a Parquet string column) needs no per-value pass: 1 s per million rows.
        if pd.api.types.infer_dtype(converted, skipna=True) not in ("string", "empty"):
            converted = converted.map(lambda v: v if v is None or isinstance(v, str) else str(v))
    elif pd.api.types.is_integer_dtype(dtype):
        converted = parse_integers(values)
    elif pd.api.types.is_float_dtype(dtype):
        converted = pd.to_numeric(values, errors="coerce").astype("float64")
    else:
        converted = parse_timestamps(values, dtype)
    return converted, present & converted.isna()


def as_utc(value: pd.Timestamp | datetime | str) -> pd.Timestamp:
    """One timestamp in UTC by the rule ``parse_timestamps`` applies to columns: naive means UTC."""
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def parse_timestamps(values: pd.Series, dtype: object) -> pd.Series:
    """Timestamps in ``dtype``'s unit; naive values are taken as UTC, aware ones converted to UTC."""
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        parsed = values.dt.tz_localize("UTC") if values.dt.tz is None else values.dt.tz_convert("UTC")
    else:
        parsed = pd.to_datetime(values, errors="coerce", utc=True, format="ISO8601")
    unit = getattr(dtype, "unit", None) or np.datetime_data(np.dtype(dtype))[0]
    parsed = parsed.dt.as_unit(unit)
    tz = getattr(dtype, "tz", None)
    return parsed.dt.tz_convert(tz) if tz is not None else parsed.dt.tz_localize(None)


def parse_integers(values: pd.Series) -> pd.Series:
    """Nullable ``Int64``; text, floats with a fraction, or numbers beyond int64 become null."""
    if pd.api.types.is_integer_dtype(values.dtype):
        return values.astype("Int64")
    numbers = pd.to_numeric(values, errors="coerce", dtype_backend="numpy_nullable")
    if pd.api.types.is_integer_dtype(numbers.dtype):
        return numbers.astype("Int64")
    floats = numbers.astype("float64")
    whole = np.isfinite(floats) & (floats == np.floor(floats)) & (floats.abs() < _INT64_LIMIT)
    return floats.where(whole).astype("Int64")


def read_raw_table(path: Path, schema: pa.DataFrameSchema, max_bytes: int | None = None) -> pd.DataFrame:
    """Read a raw .parquet or .csv file into the schema's types, keeping every row.

    Columns whose values all parse come back typed (timestamps ``datetime64[us, UTC]``, naive CSV timestamps
    read as UTC; ids ``int64`` unless some are missing). A column with a value that does not parse is returned
    as read, so ``validate_batch`` can quarantine that row with its original value. Absent optional columns
    are added as nulls; extra columns are kept as read. Raises ``RawFileError`` naming the file for an
    unreadable file, a missing required column, or a file larger than ``max_bytes`` (never read into memory).
    """
    path = Path(path)
    _check_size(path, max_bytes)
    return _typed_table(_read_file(path), schema, path)


def read_raw_chunks(
    path: Path, schema: pa.DataFrameSchema, rows: int, max_bytes: int | None = None
) -> Iterator[pd.DataFrame]:
    """``read_raw_table`` a chunk of at most ``rows`` rows at a time, in file order: a file of any size in
    bounded memory. Each chunk is typed on its own (a value that does not parse leaves its chunk's column as read).
    """
    path = Path(path)
    _check_size(path, max_bytes)
    for raw in _read_file_chunks(path, rows):
        yield _typed_table(raw, schema, path)


def read_raw_ids(
    path: Path,
    schema: pa.DataFrameSchema,
    id_column: str,
    rows: int = 1_000_000,
    max_bytes: int | None = None,
) -> pyarrow.Array:
    """A raw file's id column as validation sees it (typed as ``read_raw_table`` types it, then parsed), in Arrow
    strings: compact enough for a whole file's ids, read ``rows`` at a time."""
    path = Path(path)
    _check_size(path, max_bytes)
    # The first row first: a file that is empty or lacks columns is refused as ``read_raw_table`` refuses it.
    if (first := next(_read_file_chunks(path, 1), None)) is not None:
        _typed_table(first, schema, path)
    dtype = schema.columns[id_column].dtype.type
    try:
        if path.suffix.lower() == ".parquet":
            parquet = pq.ParquetFile(path)
            if _is_text(dtype) and pyarrow.types.is_string(parquet.schema_arrow.field(id_column).type):
                # Text stored as text is what parsing would make of it: no pass through pandas (5 s per 10 M).
                return parquet.read(columns=[id_column]).column(0).combine_chunks()
            parts = (
                batch.column(0).to_pandas()
                for batch in parquet.iter_batches(batch_size=rows, columns=[id_column])
            )
        else:
            parts = (
                chunk[id_column]
                for chunk in pd.read_csv(path, usecols=[id_column], dtype=str, chunksize=rows)
            )
        arrays = []
        for values in parts:
            typed, unparsable = parse_series(values, dtype)
            as_read = values if unparsable.any() else cast_column(typed, dtype)
            arrays.append(pyarrow.array(parse_series(as_read, dtype)[0].astype(object), pyarrow.string()))
    except (OSError, ValueError, KeyError, pyarrow.ArrowException) as exc:
        raise RawFileError(
            f"{path}: cannot be read as {path.suffix.lower()[1:]} (column {id_column}): {exc}"
        ) from exc
    return pyarrow.chunked_array(arrays, pyarrow.string()).combine_chunks()


def _is_text(dtype: object) -> bool:
    """Whether ``parse_series`` keeps a column's values as text: any type but a timestamp or a number."""
    return not (
        isinstance(dtype, pd.DatetimeTZDtype)
        or pd.api.types.is_datetime64_dtype(dtype)
        or pd.api.types.is_integer_dtype(dtype)
        or pd.api.types.is_float_dtype(dtype)
    )


def _typed_table(raw: pd.DataFrame, schema: pa.DataFrameSchema, path: Path) -> pd.DataFrame:
    if raw.empty and len(raw.columns) == 0:
        raise RawFileError(f"{path}: empty file")
    if missing := missing_columns(raw, schema):
        raise RawFileError(
            f"{path}: missing required column(s) {', '.join(missing)}; "
            f"expected the columns {', '.join(schema.columns)}"
        )
    typed, unparsable = parse_columns(raw, schema)
    table = raw.copy()
    for name, column in schema.columns.items():
        if unparsable[name].any():
            logger.warning("%s: %d value(s) of %s do not parse", path, int(unparsable[name].sum()), name)
            continue
        table[name] = cast_column(typed[name], column.dtype.type)
    ordered = list(schema.columns) + [c for c in raw.columns if c not in schema.columns]
    return table[ordered]


def cast_column(values: pd.Series, dtype: object) -> pd.Series:
    """``values`` in ``dtype`` when it can hold them (an int64 column with nulls stays ``Int64``)."""
    if _is_text(dtype):
        # ``parse_series`` made each present value text; ``astype(str)`` would make a null the text "None".
        return values
    if pd.api.types.is_integer_dtype(dtype) and values.isna().any():
        return values
    return values.astype(dtype)


def _check_size(path: Path, max_bytes: int | None) -> None:
    if max_bytes is not None and path.is_file() and (size := path.stat().st_size) > max_bytes:
        raise RawFileError(
            f"{path}: {size / 2**20:,.0f} MiB is more than the {max_bytes / 2**20:,.0f} MiB a raw file may hold "
            "(RTML_MAX_RAW_FILE_MB): split it into smaller batches"
        )


def _check_readable(path: Path) -> None:
    if path.suffix.lower() not in RAW_SUFFIXES:
        raise RawFileError(f"{path}: unsupported file type {path.suffix!r}; raw files are .parquet or .csv")
    if not path.is_file():
        raise RawFileError(f"{path}: no such file")


def _read_file_chunks(path: Path, rows: int) -> Iterator[pd.DataFrame]:
    _check_readable(path)
    try:
        if path.suffix.lower() == ".parquet":
            for batch in pq.ParquetFile(path).iter_batches(batch_size=rows):
                yield pyarrow.Table.from_batches([batch]).to_pandas()
        else:
            yield from pd.read_csv(path, dtype=str, chunksize=rows)
    except pd.errors.EmptyDataError as exc:
        raise RawFileError(f"{path}: empty file") from exc
    except (OSError, ValueError, pyarrow.ArrowException) as exc:
        raise RawFileError(f"{path}: cannot be read as {path.suffix.lower()[1:]}: {exc}") from exc


def _read_file(path: Path) -> pd.DataFrame:
    _check_readable(path)
    try:
        if path.suffix.lower() == ".parquet":
            return pd.read_parquet(path)
        # Everything as text: parsing to the schema's types happens per value, so one bad value spoils no column.
        return pd.read_csv(path, dtype=str)
    except pd.errors.EmptyDataError as exc:
        raise RawFileError(f"{path}: empty file") from exc
    except (OSError, ValueError, pyarrow.ArrowException) as exc:
        raise RawFileError(f"{path}: cannot be read as {path.suffix.lower()[1:]}: {exc}") from exc


def hash_file(path: Path) -> str:
    """sha256 of the file's bytes: a batch's identity, whatever its name."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_manifest(manifest_path: Path) -> dict[str, dict]:
    """The ingested batches recorded so far, keyed by sha256 (empty when there is no manifest yet)."""
    if not manifest_path.exists():
        return {}
    try:
        manifest = json.loads(manifest_path.read_text())
        batches = manifest["batches"]
        if not isinstance(batches, dict):
            raise TypeError("'batches' is not an object")
    except (ValueError, KeyError, TypeError) as exc:
        raise RawFileError(
            f"{manifest_path}: not a batch manifest ({exc!r}); restore it, or delete it to ingest every batch again"
        ) from exc
    return batches


def find_new_batches(raw_dir: Path, manifest_path: Path) -> list[RawBatch]:
    """The .parquet and .csv files directly in ``raw_dir`` whose content is not in the manifest, sorted by name.

    A batch is named by its file's stem. Content seen before under another name is not new; a changed file is.
    Hidden files and names starting with ``_`` (partial uploads) are skipped.
    """
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        return []
    files = sorted(
        p
        for p in raw_dir.iterdir()
        if p.is_file() and p.suffix.lower() in RAW_SUFFIXES and not p.name.startswith((".", "_"))
    )
    stems: dict[str, Path] = {}
    for path in files:
        if path.stem in stems:
            raise RawFileError(
                f"{stems[path.stem].name} and {path.name} in {raw_dir} both name batch {path.stem!r}: keep one"
            )
        stems[path.stem] = path
    known = set(load_manifest(manifest_path))
    new: list[RawBatch] = []
    for path in files:
        sha256 = hash_file(path)
        if sha256 in known:
            logger.info("%s: already ingested (same content), skipped", path.name)
            continue
        known.add(sha256)
        new.append(RawBatch(path=path, name=path.stem, sha256=sha256))
    return sorted(new, key=lambda batch: batch.name)


def record_batch(manifest_path: Path, batch: RawBatch, summary: dict) -> None:
    """Add ``batch`` to the manifest with its validation summary (atomic rewrite of the JSON file)."""
    batches = load_manifest(manifest_path)
    batches[batch.sha256] = {
        "name": batch.name,
        "file": batch.path.name,
        "recorded_at": datetime.now(UTC).isoformat(),
        "summary": summary,
    }
    write_atomically(manifest_path, json.dumps({"batches": batches}, indent=2, default=_json_value))


def refuse_batch(manifest_path: Path, batch: RawBatch, reason: str, refused_dir: Path) -> Path:
    """Set a batch aside that cannot be ingested: ``<refused_dir>/<batch>.json`` names its file and the reason,
    and the manifest records it refused, so this content is not tried again (a corrected file is new content).
    The file stays where it landed; returns the refusal's path."""
    logger.error("batch %s refused: %s", batch.name, reason)
    record = {"file": str(batch.path), "sha256": batch.sha256, "reason": reason}
    path = write_atomically(Path(refused_dir) / f"{batch.name}.json", json.dumps(record, indent=2))
    record_batch(manifest_path, batch, {"refused": reason})
    return path


def _json_value(value: object) -> object:
    # numpy scalars and timestamps reach summaries from pandas aggregates.
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, pd.Timestamp | datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
