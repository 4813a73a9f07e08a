"""Reading raw CSV and Parquet files into the schema's types, and the manifest of ingested batches."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flows.feature_store.ingestion import (
    RawBatch,
    RawFileError,
    as_utc,
    find_new_batches,
    parse_timestamps,
    read_raw_table,
    record_batch,
)
from flows.feature_store.validation import REASON_COLUMN, validate_batch
from flows.fraud_data.schema import customers_schema, transactions_schema

NOW = pd.Timestamp("2026-03-01 12:00", tz="UTC")


def transactions(rows: int = 5) -> pd.DataFrame:
    """A small clean batch in the raw schema's types."""
    events = pd.date_range("2026-02-01 08:00", periods=rows, freq="7min", tz="UTC").as_unit("us")
    labels = pd.Series(pd.NaT, index=range(rows), dtype=events.dtype)
    labels[1] = events[1] + pd.Timedelta("3D")
    return pd.DataFrame(
        {
            "transaction_id": [f"tx-{i:03d}" for i in range(rows)],
            "event_timestamp": events,
            "customer_id": np.arange(1, rows + 1, dtype="int64"),
            "merchant_id": np.full(rows, 7, dtype="int64"),
            "amount": [9.99 * (i + 1) for i in range(rows)],
            "channel": ["online"] * rows,
            "is_fraud": pd.array([None, 1] + [None] * (rows - 2), dtype="Int64"),
            "label_timestamp": labels,
            "oracle_probability": [0.25] * rows,
        }
    )


def validate(frame: pd.DataFrame):
    return validate_batch(
        frame,
        transactions_schema,
        batch_name="b",
        references={"customer_id": set(range(1, 100)), "merchant_id": {7}},
        timestamp_column="event_timestamp",
        now=NOW,
    )


def write(frame: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return path


def test_csv_and_parquet_give_the_same_typed_frame_and_valid_rows(tmp_path: Path) -> None:
    source = transactions()
    from_csv = read_raw_table(write(source, tmp_path / "b.csv"), transactions_schema)
    from_parquet = read_raw_table(write(source, tmp_path / "b.parquet"), transactions_schema)

    pd.testing.assert_frame_equal(from_csv, source)
    pd.testing.assert_frame_equal(from_parquet, source)
    pd.testing.assert_frame_equal(validate(from_csv).valid, validate(from_parquet).valid)
    assert validate(from_csv).quarantined.empty


def test_csv_timestamps_without_zone_are_utc_and_others_converted(tmp_path: Path) -> None:
    text = transactions().astype(str).replace({"NaT": "", "<NA>": ""})
    text["event_timestamp"] = [
        "2026-02-01 08:00:00",
        "2026-02-01T09:00:00Z",
        "2026-02-01 12:00:00+02:00",
        "2026-02-01",
        "2026-02-01 10:30:00.250",
    ]
    table = read_raw_table(write(text, tmp_path / "b.csv"), transactions_schema)

    assert str(table["event_timestamp"].dtype) == "datetime64[us, UTC]"
    assert list(table["event_timestamp"]) == [
        pd.Timestamp(t, tz="UTC")
        for t in [
            "2026-02-01 08:00",
            "2026-02-01 09:00",
            "2026-02-01 10:00",
            "2026-02-01",
            "2026-02-01 10:30:00.250",
        ]
    ]


def test_parquet_timestamps_in_other_units_and_zones_are_normalized(tmp_path: Path) -> None:
    source = transactions()
    source["event_timestamp"] = source["event_timestamp"].dt.tz_convert("Europe/Paris").dt.as_unit("ns")
    source["label_timestamp"] = source["label_timestamp"].dt.tz_localize(None).dt.as_unit("ms")
    table = read_raw_table(write(source, tmp_path / "b.parquet"), transactions_schema)

    pd.testing.assert_frame_equal(table, transactions())


def test_ids_are_int64_when_valid(tmp_path: Path) -> None:
    source = transactions()
    source["customer_id"] = source["customer_id"].astype(float)  # as some tools write integer columns
    table = read_raw_table(write(source, tmp_path / "b.parquet"), transactions_schema)

    assert table["customer_id"].dtype == "int64"
    assert table["merchant_id"].dtype == "int64"


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_unparsable_values_keep_their_row_and_their_text(tmp_path: Path, suffix: str) -> None:
    text = transactions().astype(str).replace({"NaT": None, "<NA>": None})
    text.loc[1, "amount"] = "abc"
    text.loc[3, "event_timestamp"] = "31/02/2026 25:00"
    table = read_raw_table(write(text, tmp_path / f"b{suffix}"), transactions_schema)

    assert len(table) == len(text)
    assert table.at[1, "amount"] == "abc"
    assert table.at[3, "event_timestamp"] == "31/02/2026 25:00"
    assert table["customer_id"].dtype == "int64"  # columns that parse are typed all the same

    result = validate(table)
    assert result.quarantined[REASON_COLUMN].to_dict() == {
        1: "amount: not parsable as float64",
        3: "event_timestamp: not parsable as datetime64[us, UTC]",
    }
    assert result.quarantined.at[1, "amount"] == "abc"
    assert list(result.valid["transaction_id"]) == ["tx-000", "tx-002", "tx-004"]


def test_missing_ids_stay_nullable_for_validation(tmp_path: Path) -> None:
    text = transactions().astype(str).replace({"NaT": None, "<NA>": None})
    text.loc[2, "customer_id"] = None
    table = read_raw_table(write(text, tmp_path / "b.csv"), transactions_schema)

    assert table["customer_id"].dtype == "Int64"
    assert validate(table).quarantined[REASON_COLUMN].to_dict() == {2: "customer_id: not_nullable"}


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_file_missing_a_required_column_names_file_and_column(tmp_path: Path, suffix: str) -> None:
    path = write(transactions().drop(columns=["merchant_id", "channel"]), tmp_path / f"b{suffix}")

    with pytest.raises(
        RawFileError, match=r"b\.\w+: missing required column\(s\) merchant_id, channel"
    ) as err:
        read_raw_table(path, transactions_schema)
    assert str(path) in str(err.value)


def test_optional_column_absent_is_added_as_nulls(tmp_path: Path) -> None:
    table = read_raw_table(
        write(transactions().drop(columns="oracle_probability"), tmp_path / "b.csv"), transactions_schema
    )

    assert table["oracle_probability"].isna().all()
    assert table["oracle_probability"].dtype == "float64"
    assert validate(table).quarantined.empty


def test_extra_columns_are_kept_for_quarantine_but_not_passed_on(tmp_path: Path) -> None:
    source = transactions().assign(note="hand-entered")
    source.loc[0, "amount"] = -3.0
    table = read_raw_table(write(source, tmp_path / "b.parquet"), transactions_schema)
    result = validate(table)

    assert list(table.columns) == [*transactions_schema.columns, "note"]
    assert result.quarantined.at[0, "note"] == "hand-entered"
    assert list(result.valid.columns) == list(transactions_schema.columns)


@pytest.mark.parametrize(
    "name, content, problem",
    [
        ("b.parquet", b"not a parquet file", "cannot be read as parquet"),
        ("b.csv", b"", "empty file"),
        ("b.csv", "customer_id\n1\n".encode("utf-16"), "cannot be read as csv"),
        ("b.csv", b'customer_id,home_region\n1,"north\n', "cannot be read as csv"),
        ("b.json", b"{}", "unsupported file type '.json'"),
    ],
)
def test_unreadable_file_raises_naming_it(tmp_path: Path, name: str, content: bytes, problem: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)

    with pytest.raises(RawFileError, match=problem) as err:
        read_raw_table(path, customers_schema)
    assert str(path) in str(err.value)


def test_a_file_above_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "huge.csv"
    with path.open("wb") as sparse:
        sparse.truncate(3 * 2**20)
    with pytest.raises(RawFileError, match=r"huge\.csv: 3 MiB is more than the 2 MiB"):
        read_raw_table(path, customers_schema, max_bytes=2 * 2**20)


def test_absent_file_raises_naming_it(tmp_path: Path) -> None:
    with pytest.raises(RawFileError, match="no such file"):
        read_raw_table(tmp_path / "customers.csv", customers_schema)


def test_manifest_finds_only_new_or_changed_batches(tmp_path: Path) -> None:
    raw, manifest = tmp_path / "raw" / "transactions", tmp_path / "manifest.json"
    write(transactions(3), raw / "2026-02-02.csv")
    write(transactions(4), raw / "2026-02-01.parquet")
    (raw / ".2026-02-03.csv").write_text("partial upload")
    (raw / "_2026-02-03.csv").write_text("partial upload")
    (raw / "notes.txt").write_text("not a batch")

    first = find_new_batches(raw, manifest)
    assert [(b.name, b.path.name) for b in first] == [
        ("2026-02-01", "2026-02-01.parquet"),
        ("2026-02-02", "2026-02-02.csv"),
    ]
    for batch in first:
        record_batch(manifest, batch, {"rows": np.int64(3), "reason_counts": {}})
    assert find_new_batches(raw, manifest) == []

    shutil.copy(raw / "2026-02-02.csv", raw / "2026-02-05.csv")  # same content, another name
    assert find_new_batches(raw, manifest) == []

    write(transactions(5), raw / "2026-02-02.csv")  # changed in place
    write(transactions(6), raw / "2026-02-04.parquet")
    changed = find_new_batches(raw, manifest)
    assert [b.name for b in changed] == ["2026-02-02", "2026-02-04"]
    assert changed[0].sha256 != first[1].sha256


def test_same_new_content_twice_is_one_batch(tmp_path: Path) -> None:
    write(transactions(3), tmp_path / "a.csv")
    shutil.copy(tmp_path / "a.csv", tmp_path / "b.csv")

    assert [b.name for b in find_new_batches(tmp_path, tmp_path / "m.json")] == ["a"]


def test_record_batch_keeps_the_summary_by_content_hash(tmp_path: Path) -> None:
    write(transactions(3), tmp_path / "raw" / "a.parquet")
    manifest = tmp_path / "state" / "manifest.json"
    [batch] = find_new_batches(tmp_path / "raw", manifest)

    record_batch(manifest, batch, {"rows": np.int64(3), "invalid_fraction": np.float64(0.0)})

    stored = json.loads(manifest.read_text())["batches"]
    assert stored[batch.sha256]["name"] == "a"
    assert stored[batch.sha256]["file"] == "a.parquet"
    assert stored[batch.sha256]["summary"] == {"rows": 3, "invalid_fraction": 0.0}


def test_two_files_naming_one_batch_are_refused(tmp_path: Path) -> None:
    write(transactions(3), tmp_path / "a.csv")
    write(transactions(4), tmp_path / "a.parquet")

    with pytest.raises(RawFileError, match=r"a\.csv and a\.parquet .* both name batch 'a'"):
        find_new_batches(tmp_path, tmp_path / "m.json")


def test_corrupt_manifest_is_named(tmp_path: Path) -> None:
    write(transactions(3), tmp_path / "a.csv")
    manifest = tmp_path / "m.json"
    manifest.write_text("{not json")

    with pytest.raises(RawFileError, match=r"m\.json: not a batch manifest"):
        find_new_batches(tmp_path, manifest)


def test_absent_landing_folder_has_no_batches(tmp_path: Path) -> None:
    assert find_new_batches(tmp_path / "nothing-yet", tmp_path / "m.json") == []


def test_raw_batch_is_identified_by_content(tmp_path: Path) -> None:
    path = write(transactions(3), tmp_path / "a.csv")
    [batch] = find_new_batches(tmp_path, tmp_path / "m.json")

    assert batch == RawBatch(path=path, name="a", sha256=batch.sha256)
    assert batch.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_one_timestamp_is_read_by_the_rule_for_columns() -> None:
    texts = ["2026-03-01T10:00:00", "2026-03-01T10:00:00+02:00", "2026-03-01T10:00:00Z"]
    column = parse_timestamps(pd.Series(texts), pd.DatetimeTZDtype(unit="us", tz="UTC"))
    assert [as_utc(t) for t in texts] == column.tolist()
    assert as_utc(texts[1]) == pd.Timestamp("2026-03-01T08:00:00", tz="UTC")
