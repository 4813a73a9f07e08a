"""Labels on their own: each quarantine rule of a labels batch, and ``read_labels``, the one reader of labels."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest

from flows.feature_store.labels import read_labels, validate_labels, write_validated_labels
from flows.feature_store.offline_store import write_partitions
from flows.feature_store.validation import REASON_COLUMN, ValidationResult
from flows.fraud_data.schema import labels_schema

NOW = pd.Timestamp("2026-03-20 12:00", tz="UTC")
EVENTS = pd.date_range("2026-03-01 09:00", periods=4, freq="1h", tz="UTC").as_unit("us")


def utc(*values: str) -> pd.Series:
    return pd.Series(pd.to_datetime(list(values), utc=True, format="ISO8601")).dt.as_unit("us")


def transactions(
    ids: list[str], events: pd.DatetimeIndex, labelled: dict[str, tuple[int, str]]
) -> pd.DataFrame:
    """Validated transactions; ``labelled`` maps an id to its inline label (is_fraud, label_timestamp)."""
    return pd.DataFrame(
        {
            "transaction_id": ids,
            "event_timestamp": events,
            "customer_id": 1,
            "merchant_id": [10 + i % 2 for i in range(len(ids))],
            "amount": 25.0,
            "channel": "online",
            "is_fraud": pd.array([labelled.get(i, (None,))[0] for i in ids], dtype="Int64"),
            "label_timestamp": pd.to_datetime(
                [labelled.get(i, (None, None))[1] for i in ids], utc=True
            ).as_unit("us"),
        }
    )


def labels(rows: list[tuple[str, int, str]]) -> pd.DataFrame:
    ids, frauds, times = zip(*rows, strict=True)
    return pd.DataFrame(
        {"transaction_id": list(ids), "is_fraud": list(frauds), "label_timestamp": utc(*times)}
    )


def ingest(frame: pd.DataFrame, validated_dir: Path, batch: str) -> ValidationResult:
    """A labels batch as the feature pipeline ingests it: validated, its valid rows written."""
    result = validate_labels(frame, labels_schema, validated_dir=validated_dir, batch_name=batch, now=NOW)
    write_validated_labels(result.valid, validated_dir, batch)
    return result


@pytest.fixture
def validated(tmp_path: Path) -> Path:
    """t0 labelled inline (fraud, a day later); t1..t3 unlabelled."""
    ids = ["t0", "t1", "t2", "t3"]
    write_partitions(
        transactions(ids, EVENTS, {"t0": (1, "2026-03-02 09:00")}), tmp_path / "transactions", "tx-1"
    )
    return tmp_path


def test_a_label_for_an_unlabelled_transaction_is_valid_and_stored_by_label_date(validated: Path) -> None:
    result = ingest(labels([("t1", 1, "2026-03-05 10:00"), ("t2", 0, "2026-03-08")]), validated, "cb-1")

    assert result.quarantined.empty
    stored = sorted(p.relative_to(validated).as_posix() for p in (validated / "labels").rglob("*.parquet"))
    assert stored == ["labels/date=2026-03-05/cb-1-0.parquet", "labels/date=2026-03-08/cb-1-0.parquet"]


def test_a_label_for_a_transaction_labelled_inline_is_quarantined_naming_that_label(validated: Path) -> None:
    result = ingest(labels([("t0", 0, "2026-03-05"), ("t1", 1, "2026-03-05")]), validated, "cb-1")

    assert list(result.valid["transaction_id"]) == ["t1"]
    assert result.quarantined.at[0, REASON_COLUMN] == (
        "transaction_id: labelled before (is_fraud=1 at 2026-03-02T09:00:00+00:00 in its transaction row)"
    )


def test_a_label_for_a_transaction_labelled_in_an_earlier_file_is_quarantined_first_wins(
    validated: Path,
) -> None:
    ingest(labels([("t1", 1, "2026-03-05 10:00")]), validated, "cb-1")
    result = ingest(labels([("t1", 0, "2026-03-06"), ("t2", 0, "2026-03-06")]), validated, "cb-2")

    assert result.quarantined.at[0, REASON_COLUMN] == (
        "transaction_id: labelled before (is_fraud=1 at 2026-03-05T10:00:00+00:00 in labels batch cb-1)"
    )
    assert result.reason_counts == {"transaction_id: labelled before": 1}
    assert read_labels(validated).set_index("transaction_id")["is_fraud"].to_dict() == {
        "t0": 1,
        "t1": 1,
        "t2": 0,
    }


def test_a_retried_batch_does_not_count_its_own_labels_as_earlier(validated: Path) -> None:
    batch = labels([("t1", 1, "2026-03-05")])
    ingest(batch, validated, "cb-1")  # written, but the run failed before the manifest recorded it

    assert ingest(batch, validated, "cb-1").quarantined.empty
    assert len(read_labels(validated)) == 2


def test_a_label_earlier_than_its_known_transaction_is_quarantined(validated: Path) -> None:
    result = ingest(labels([("t3", 0, "2026-03-01 11:30"), ("t2", 0, "2026-03-01 11:30")]), validated, "cb-1")

    assert list(result.valid["transaction_id"]) == ["t2"]  # t2 happened at 11:00
    assert result.quarantined.at[0, REASON_COLUMN] == (
        "label_timestamp: earlier than its transaction's event_timestamp (2026-03-01T12:00:00+00:00)"
    )


def test_a_label_whose_transaction_is_unknown_is_kept(validated: Path) -> None:
    result = ingest(labels([("later", 1, "2026-03-01 08:00")]), validated, "cb-1")

    assert result.quarantined.empty
    assert "later" not in set(read_labels(validated)["transaction_id"])  # until its transaction lands


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        (("", 1, "2026-03-05"), "transaction_id: str_length(1, None)"),
        (("t1", 2, "2026-03-05"), "is_fraud: isin([0, 1])"),
        (("t1", 1, "2026-03-21"), "label_timestamp: in the future (after 2026-03-20T12:05:00+00:00)"),
        (("t2", 1, "2026-03-05"), "transaction_id: field_uniqueness"),  # t2 is labelled earlier in the file
    ],
    ids=["empty id", "label not 0/1", "label in the future", "duplicate in the file"],
)
def test_column_rules_quarantine_with_their_reason(
    validated: Path, row: tuple[str, int, str], reason: str
) -> None:
    result = ingest(labels([("t2", 0, "2026-03-04"), row]), validated, "cb-1")

    assert list(result.quarantined.index) == [1]
    assert result.quarantined.at[1, REASON_COLUMN] == reason


def test_labels_from_a_csv_file_with_bad_values_are_quarantined_as_read(validated: Path) -> None:
    frame = pd.DataFrame(
        {
            "transaction_id": ["t1", "t2", "t3"],
            "is_fraud": ["1", "yes", None],
            "label_timestamp": ["2026-03-05T00:00:00Z", "2026-03-05T00:00:00Z", "soon"],
        }
    )
    result = ingest(frame, validated, "cb-1")

    assert result.quarantined[REASON_COLUMN].tolist() == [
        "is_fraud: not parsable as int64",
        "is_fraud: not_nullable; label_timestamp: not parsable as datetime64[us, UTC]",
    ]
    assert result.valid["is_fraud"].dtype == "int64"


def test_read_labels_joins_inline_and_separate_labels_with_the_transaction_columns(validated: Path) -> None:
    ingest(labels([("t2", 1, "2026-03-10"), ("t1", 0, "2026-03-08")]), validated, "cb-1")

    got = read_labels(validated, columns=["merchant_id", "event_timestamp"])

    assert list(got.columns) == [
        "transaction_id",
        "is_fraud",
        "label_timestamp",
        "merchant_id",
        "event_timestamp",
    ]
    assert got["transaction_id"].tolist() == ["t0", "t1", "t2"]  # the transactions' order
    assert got["is_fraud"].tolist() == [1, 0, 1] and got["is_fraud"].dtype == "int64"
    assert got["label_timestamp"].tolist() == list(utc("2026-03-02 09:00", "2026-03-08", "2026-03-10"))
    assert got["merchant_id"].tolist() == [10, 11, 10]
    assert got["event_timestamp"].tolist() == list(EVENTS[:3])


def test_read_labels_keeps_labels_known_by_and_transactions_since(validated: Path) -> None:
    ingest(labels([("t2", 1, "2026-03-10"), ("t1", 0, "2026-03-08")]), validated, "cb-1")

    known = read_labels(validated, known_by=pd.Timestamp("2026-03-08", tz="UTC"))
    assert known["transaction_id"].tolist() == ["t0", "t1"]
    recent = read_labels(validated, since=EVENTS[1].to_pydatetime())
    assert recent["transaction_id"].tolist() == ["t1", "t2"]


def test_a_label_arriving_before_its_transaction_applies_once_the_transaction_lands(validated: Path) -> None:
    events = pd.DatetimeIndex([EVENTS[-1] + pd.Timedelta("2min"), EVENTS[-1] + pd.Timedelta("3min")])
    ingest(labels([("t9", 1, "2026-03-01 12:10"), ("t8", 0, "2026-03-01 12:01")]), validated, "cb-1")
    assert read_labels(validated)["transaction_id"].tolist() == ["t0"]

    # The stream lands the transactions minutes later; t9's row even carries a label of its own.
    write_partitions(
        transactions(["t8", "t9"], events, {"t9": (0, "2026-03-01 12:30")}),
        validated / "transactions",
        "tx-2",
    )

    got = read_labels(validated).set_index("transaction_id")
    assert got["is_fraud"].to_dict() == {"t0": 1, "t9": 1}  # the labels file came first; t8 arrived too early
    assert got.at["t9", "label_timestamp"] == pd.Timestamp("2026-03-01 12:10", tz="UTC")


def test_a_label_earlier_than_a_transaction_that_landed_after_it_is_ignored_with_a_warning(
    validated: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ingest(labels([("t8", 0, "2026-03-01 12:01")]), validated, "cb-1")
    write_partitions(
        transactions(["t8"], pd.DatetimeIndex([EVENTS[-1] + pd.Timedelta("2min")]), {}),
        validated / "transactions",
        "tx-2",
    )

    with caplog.at_level(logging.WARNING):
        assert "t8" not in set(read_labels(validated)["transaction_id"])
    assert "1 label(s)" in caplog.text and "t8" in caplog.text


def test_read_labels_without_transactions_is_empty_and_typed(tmp_path: Path) -> None:
    got = read_labels(tmp_path, columns=["merchant_id"])

    assert got.empty
    assert list(got.columns) == ["transaction_id", "is_fraud", "label_timestamp", "merchant_id"]
    assert got["is_fraud"].dtype == "int64"


def test_read_labels_names_a_column_the_transactions_lack(validated: Path) -> None:
    with pytest.raises(ValueError, match="lack column\\(s\\) 'oracle_probability'"):
        read_labels(validated, columns=["oracle_probability"])
