"""Raw batch validation: each kind of bad row is quarantined with its reason, good rows pass, shares gate."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow
import pytest

from flows.feature_store.ingestion import read_raw_chunks, read_raw_ids, read_raw_table
from flows.feature_store.validation import (
    REASON_COLUMN,
    ROW_COLUMN,
    BatchRejectedError,
    ChunkTally,
    RowRule,
    ValidationResult,
    as_lookup,
    check_invalid_share,
    find_id_conflicts,
    is_listed,
    validate_batch,
    validate_chunks,
    write_quarantine,
)
from flows.fraud_data.schema import CHANNELS, MAX_AMOUNT, customers_schema, transactions_schema

NOW = pd.Timestamp("2026-03-01 12:00", tz="UTC")
REFERENCES = {"customer_id": {1, 2, 3}, "merchant_id": {10, 11}}
BAD = 2  # the row each corruption below spoils


def good_transactions(rows: int = 6) -> pd.DataFrame:
    """A clean batch: two minutes apart, well before NOW, one labelled fraud and one labelled legit."""
    events = pd.date_range("2026-03-01 09:00", periods=rows, freq="2min", tz="UTC").as_unit("us")
    labels = pd.Series(pd.NaT, index=range(rows), dtype=events.dtype)
    labels[0] = events[0] + pd.Timedelta("2h")
    labels[1] = events[1] + pd.Timedelta("30min")
    return pd.DataFrame(
        {
            "transaction_id": [f"t{i}" for i in range(rows)],
            "event_timestamp": events,
            "customer_id": [1 + i % 3 for i in range(rows)],
            "merchant_id": [10 + i % 2 for i in range(rows)],
            "amount": [12.5 + i for i in range(rows)],
            "channel": ["chip", "contactless", "online"] * (rows // 3) + ["chip"] * (rows % 3),
            "is_fraud": pd.array([0, 1] + [None] * (rows - 2), dtype="Int64"),
            "label_timestamp": labels,
            "oracle_probability": [0.01] * rows,
        }
    )


def validate(df: pd.DataFrame, **overrides: object) -> ValidationResult:
    """``validate_batch`` as the feature pipeline calls it for transactions."""
    options: dict = {
        "batch_name": "batch-1",
        "known_ids": set(),
        "id_column": "transaction_id",
        "references": REFERENCES,
        "timestamp_column": "event_timestamp",
        "now": NOW,
    }
    return validate_batch(df, transactions_schema, **(options | overrides))


def set_value(column: str, value: object) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def corrupt(df: pd.DataFrame) -> pd.DataFrame:
        df[column] = df[column].astype(object)  # room for a value of the wrong type, as a CSV would hold
        df.at[BAD, column] = value
        return df

    return corrupt


def shift_event(delta: str) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def corrupt(df: pd.DataFrame) -> pd.DataFrame:
        df.at[BAD, "event_timestamp"] = df.at[BAD - 1, "event_timestamp"] + pd.Timedelta(delta)
        return df

    return corrupt


def label_before_event(df: pd.DataFrame) -> pd.DataFrame:
    df.at[BAD, "is_fraud"] = 0
    df.at[BAD, "label_timestamp"] = df.at[BAD, "event_timestamp"] - pd.Timedelta("1h")
    return df


def event_in_future(df: pd.DataFrame) -> pd.DataFrame:
    df.at[BAD, "event_timestamp"] = NOW + pd.Timedelta("10min")
    return df


BAD_ROWS = {
    "unparsable amount": (set_value("amount", "abc"), "amount: not parsable as float64"),
    "unparsable timestamp": (
        set_value("event_timestamp", "yesterday"),
        "event_timestamp: not parsable as datetime64[us, UTC]",
    ),
    "unparsable customer id": (set_value("customer_id", "c-2"), "customer_id: not parsable as int64"),
    "fractional merchant id": (set_value("merchant_id", 10.5), "merchant_id: not parsable as int64"),
    "null channel": (set_value("channel", None), "channel: not_nullable"),
    "null customer id": (set_value("customer_id", None), "customer_id: not_nullable"),
    "null timestamp": (set_value("event_timestamp", None), "event_timestamp: not_nullable"),
    "empty transaction id": (set_value("transaction_id", ""), "transaction_id: str_length"),
    "negative amount": (set_value("amount", -5.0), "amount: greater_than(0)"),
    "zero amount": (set_value("amount", 0.0), "amount: greater_than(0)"),
    "amount above MAX_AMOUNT": (
        set_value("amount", MAX_AMOUNT + 0.01),
        "amount: less_than_or_equal_to(50000.0)",
    ),
    "unknown channel": (set_value("channel", "atm"), "channel: isin("),
    "label not 0/1": (set_value("is_fraud", 2), "is_fraud: isin("),
    "oracle above 1": (set_value("oracle_probability", 1.5), "oracle_probability: in_range(0, 1)"),
    "duplicate id in batch": (set_value("transaction_id", "t0"), "transaction_id: field_uniqueness"),
    "unknown customer": (set_value("customer_id", 99), "customer_id: unknown customer"),
    "unknown merchant": (set_value("merchant_id", 99), "merchant_id: unknown merchant"),
    "future timestamp": (event_in_future, "event_timestamp: in the future"),
    "out of order beyond tolerance": (shift_event("-2h"), "event_timestamp: out of order"),
    "label before event": (label_before_event, "label_timestamp: earlier than event_timestamp"),
    "label without timestamp": (set_value("is_fraud", 1), "is_fraud: set without label_timestamp"),
}


@pytest.mark.parametrize("corrupt, reason", BAD_ROWS.values(), ids=BAD_ROWS.keys())
def test_bad_row_is_quarantined_with_its_reason(corrupt: Callable, reason: str) -> None:
    batch = corrupt(good_transactions())
    result = validate(batch)

    assert list(result.quarantined.index) == [BAD]
    assert reason in result.quarantined.at[BAD, REASON_COLUMN]
    assert len(result.valid) == len(batch) - 1
    assert result.invalid_fraction == pytest.approx(1 / len(batch))
    # The duplicate keeps the first copy (t0, row 0) valid.
    assert "t0" in set(result.valid["transaction_id"])


@pytest.mark.parametrize("corrupt, reason", BAD_ROWS.values(), ids=BAD_ROWS.keys())
def test_quarantined_row_keeps_its_values_as_they_came(corrupt: Callable, reason: str) -> None:
    batch = corrupt(good_transactions())
    result = validate(batch)

    for column in batch.columns:
        came, kept = batch.at[BAD, column], result.quarantined.at[BAD, column]
        assert (pd.isna(came) and pd.isna(kept)) or came == kept, column


def test_id_already_ingested_is_quarantined() -> None:
    result = validate(good_transactions(), known_ids={"t2", "elsewhere"})

    assert list(result.quarantined.index) == [2]
    assert result.quarantined.at[2, REASON_COLUMN] == "transaction_id: already ingested"


def test_good_batch_passes_whole_with_the_schema_types() -> None:
    batch = good_transactions()
    result = validate(batch)

    assert result.quarantined.empty
    assert result.invalid_fraction == 0
    assert result.reason_counts == {}
    assert list(result.valid.columns) == list(transactions_schema.columns)
    assert result.valid.dtypes.astype(str).to_dict() == {
        "transaction_id": "object",
        "event_timestamp": "datetime64[us, UTC]",
        "customer_id": "int64",
        "merchant_id": "int64",
        "amount": "float64",
        "channel": "object",
        "is_fraud": "Int64",
        "label_timestamp": "datetime64[us, UTC]",
        "oracle_probability": "float64",
    }
    transactions_schema.validate(result.valid)
    pd.testing.assert_frame_equal(result.valid, batch)


def test_text_input_comes_out_typed() -> None:
    batch = good_transactions().astype(str).replace({"NaT": None, "<NA>": None})
    result = validate(batch)

    assert result.quarantined.empty
    pd.testing.assert_frame_equal(result.valid, good_transactions())


def test_every_row_lands_in_exactly_one_side() -> None:
    batch = good_transactions(30)
    batch["amount"] = batch["amount"].astype(object)
    batch.loc[[3, 7], "amount"] = ["abc", -1.0]
    batch.loc[[11, 12], "channel"] = ["atm", None]
    batch.loc[19, "customer_id"] = 99
    batch.loc[25, "event_timestamp"] = NOW + pd.Timedelta("1D")
    result = validate(batch)

    quarantined, valid = set(result.quarantined["transaction_id"]), set(result.valid["transaction_id"])
    assert len(result.valid) + len(result.quarantined) == len(batch)
    assert not quarantined & valid
    assert quarantined | valid == set(batch["transaction_id"])
    assert list(result.quarantined.index) == [3, 7, 11, 12, 19, 25]
    assert result.quarantined.index.name == ROW_COLUMN


def test_row_breaking_several_rules_lists_each_in_column_order() -> None:
    batch = good_transactions()
    batch.loc[BAD, ["customer_id", "amount", "channel"]] = [99, -1.0, "atm"]
    result = validate(batch)

    reason = result.quarantined.at[BAD, REASON_COLUMN]
    assert reason.split("; ") == [
        "customer_id: unknown customer",
        "amount: greater_than(0)",
        f"channel: isin({CHANNELS})",
    ]
    assert result.reason_counts == {part: 1 for part in reason.split("; ")}


def test_reason_counts_count_rows_per_rule() -> None:
    batch = good_transactions(12)
    batch.loc[[1, 4, 9], "amount"] = -1.0
    batch.loc[4, "channel"] = "atm"
    result = validate(batch)

    assert result.reason_counts["amount: greater_than(0)"] == 3
    assert result.reason_counts[f"channel: isin({CHANNELS})"] == 1
    assert next(iter(result.reason_counts)) == "amount: greater_than(0)"


def test_row_rule_names_its_detail_per_row_and_counts_under_its_name() -> None:
    """A rule whose reason names another table's value (an earlier label, say) reads per row, counts per rule."""
    batch = good_transactions()
    batch.loc[4, "amount"] = -1.0
    seen_before = {"t1": "batch-0", "t4": "batch-3"}
    rule = RowRule("transaction_id", "seen before", lambda typed: typed["transaction_id"].map(seen_before))
    result = validate(batch, row_rules=[rule])

    assert result.quarantined[REASON_COLUMN].to_dict() == {
        1: "transaction_id: seen before (batch-0)",
        4: "transaction_id: seen before (batch-3); amount: greater_than(0)",
    }
    assert result.reason_counts == {"transaction_id: seen before": 2, "amount: greater_than(0)": 1}
    assert list(result.valid["transaction_id"]) == ["t0", "t2", "t3", "t5"]


def test_row_rule_sees_typed_values_and_must_name_a_schema_column() -> None:
    batch = good_transactions()
    batch["event_timestamp"] = batch["event_timestamp"].astype(str)  # as a CSV holds it
    late = RowRule(
        "event_timestamp",
        "after 09:05",
        lambda typed: typed["event_timestamp"].where(
            typed["event_timestamp"] > NOW - pd.Timedelta("2h55min")
        ),
    )
    result = validate(batch, row_rules=[late])
    assert list(result.quarantined.index) == [3, 4, 5]
    assert (
        result.quarantined.at[3, REASON_COLUMN] == "event_timestamp: after 09:05 (2026-03-01 09:06:00+00:00)"
    )
    with pytest.raises(ValueError, match="customer not a column of the transactions schema"):
        validate(
            good_transactions(), row_rules=[RowRule("customer", "x", lambda typed: typed["customer_id"])]
        )


def test_unparsable_value_is_not_also_reported_as_null() -> None:
    result = validate(set_value("amount", "abc")(good_transactions()))

    assert result.quarantined.at[BAD, REASON_COLUMN] == "amount: not parsable as float64"


def test_amount_at_max_and_lateness_within_tolerance_pass() -> None:
    batch = good_transactions()
    batch.loc[1, "amount"] = MAX_AMOUNT
    batch.loc[3, "event_timestamp"] = batch.loc[2, "event_timestamp"] - pd.Timedelta("50min")
    batch.loc[5, "event_timestamp"] = NOW + pd.Timedelta("4min")
    result = validate(batch)

    assert result.quarantined.empty


def test_order_tolerance_is_configurable() -> None:
    batch = shift_event("-2h")(good_transactions())

    assert validate(batch, order_tolerance=pd.Timedelta("3h")).quarantined.empty
    assert validate(batch, order_tolerance=None).quarantined.empty
    assert list(validate(batch, order_tolerance=pd.Timedelta("1min")).quarantined.index) == [BAD]


def test_future_row_does_not_make_later_rows_late() -> None:
    batch = event_in_future(good_transactions())
    result = validate(batch)

    assert list(result.quarantined.index) == [BAD]
    assert "out of order" not in result.quarantined.at[BAD, REASON_COLUMN]


def test_now_defaults_to_the_current_time() -> None:
    batch = good_transactions()
    batch.loc[BAD, "event_timestamp"] = pd.Timestamp.now(tz="UTC") + pd.Timedelta("1D")
    result = validate(batch, now=None, order_tolerance=None)

    assert list(result.quarantined.index) == [BAD]
    assert "in the future" in result.quarantined.at[BAD, REASON_COLUMN]


def test_reference_timestamps_are_checked_against_now_from_the_schema() -> None:
    customers = pd.DataFrame(
        {
            "customer_id": [1, 2, 3, 2],
            "account_created_at": pd.to_datetime(
                ["2020-01-01", "2021-06-01", "2026-05-01", "2022-01-01"], utc=True
            ).as_unit("us"),
            "home_region": ["north", "abroad", "east", "west"],
            "card_type": ["credit", "debit", "prepaid", "credit"],
            "credit_limit": [1000.0, 500.0, 0.0, 700.0],
        }
    )
    result = validate_batch(
        customers, customers_schema, batch_name="customers", id_column="customer_id", now=NOW
    )

    assert result.quarantined[REASON_COLUMN].to_dict() == {
        2: f"account_created_at: in the future (after {(NOW + pd.Timedelta('5min')).isoformat()}); "
        "credit_limit: greater_than(0)",
        3: "customer_id: field_uniqueness",
    }
    assert list(result.valid["customer_id"]) == [1, 2]


def test_frame_missing_a_required_column_is_refused() -> None:
    with pytest.raises(ValueError, match=r"batch-1: missing required column\(s\) amount"):
        validate(good_transactions().drop(columns="amount"))


def test_known_ids_need_their_column() -> None:
    with pytest.raises(ValueError, match="id_column"):
        validate(good_transactions(), id_column=None)


def test_context_columns_must_be_schema_columns() -> None:
    with pytest.raises(ValueError, match="customer not a column of the transactions schema"):
        validate(good_transactions(), references={"customer": {1}})


def test_quarantine_file_keeps_unparsable_values_and_reasons(tmp_path: Path) -> None:
    batch = set_value("amount", "abc")(good_transactions())
    batch.loc[4, "channel"] = "atm"
    result = validate(batch)

    path = write_quarantine(result, tmp_path / "quarantine", "batch-1")

    assert path == tmp_path / "quarantine" / "batch-1.parquet"
    written = pd.read_parquet(path)
    assert list(written[ROW_COLUMN]) == [BAD, 4]
    assert list(written["amount"]) == ["abc", "16.5"]
    assert list(written[REASON_COLUMN]) == [
        "amount: not parsable as float64",
        result.quarantined.at[4, REASON_COLUMN],
    ]
    assert list(written["transaction_id"]) == ["t2", "t4"]


def test_clean_batch_writes_no_quarantine_and_clears_a_stale_one(tmp_path: Path) -> None:
    stale = write_quarantine(validate(set_value("amount", -1.0)(good_transactions())), tmp_path, "batch-1")
    assert stale is not None and stale.exists()

    assert write_quarantine(validate(good_transactions()), tmp_path, "batch-1") is None
    assert not stale.exists()


def test_quarantine_name_must_be_a_file_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="plain file name"):
        write_quarantine(validate(good_transactions()), tmp_path, "../elsewhere")


def test_share_above_threshold_rejects_the_batch_naming_it() -> None:
    batch = good_transactions(10)
    batch.loc[[1, 2, 3], "amount"] = -1.0
    batch.loc[3, "channel"] = "atm"
    result = validate(batch)

    with pytest.raises(BatchRejectedError) as rejected:
        check_invalid_share(result, 0.25)

    message = str(rejected.value)
    assert "batch-1" in message
    assert "3 of 10 rows (30.00%)" in message
    assert "max_invalid_fraction=0.25" in message
    assert "amount: greater_than(0) (3)" in message
    assert f"channel: isin({CHANNELS}) (1)" in message


def test_share_at_or_below_threshold_passes() -> None:
    batch = good_transactions(10)
    batch.loc[[1, 2, 3], "amount"] = -1.0
    result = validate(batch)

    check_invalid_share(result, 0.3)
    check_invalid_share(validate(good_transactions()), 0.0)


def test_summary_is_plain_counts() -> None:
    result = validate(set_value("amount", -1.0)(good_transactions()))

    assert result.summary() == {
        "rows": 6,
        "valid": 5,
        "quarantined": 1,
        "invalid_fraction": pytest.approx(1 / 6),
        "reason_counts": {"amount: greater_than(0)": 1},
    }


def messy_batch(rows: int = 2_400, seed: int = 5) -> pd.DataFrame:
    """A batch as a CSV delivers it, with every kind of bad row, several of them right at chunk boundaries."""
    rng = np.random.default_rng(seed)
    events = pd.date_range("2026-02-20", periods=rows, freq="3min", tz="UTC").as_unit("us")
    batch = pd.DataFrame(
        {
            "transaction_id": [f"t{i}" for i in range(rows)],
            "event_timestamp": events,
            "customer_id": rng.integers(1, 4, rows),
            "merchant_id": rng.integers(10, 12, rows),
            "amount": np.round(rng.uniform(1, 90, rows), 2),
            "channel": rng.choice(list(CHANNELS), rows),
            "is_fraud": pd.array([None] * rows, dtype="Int64"),
            "label_timestamp": pd.Series(pd.NaT, index=range(rows), dtype=events.dtype),
            "oracle_probability": 0.01,
        }
    ).astype(object)
    picks = rng.choice(rows, 160, replace=False)
    for i, row in enumerate(picks):
        kind = i % 8
        if kind == 0:  # repeats an id, often one from an earlier chunk
            batch.at[row, "transaction_id"] = f"t{rng.integers(0, rows)}"
        elif kind == 1:
            batch.at[row, "amount"] = rng.choice(["abc", -3.0, MAX_AMOUNT + 1])
        elif kind == 2:  # late: more than an hour behind an earlier row
            batch.at[row, "event_timestamp"] = events[row] - pd.Timedelta("3h")
        elif kind == 3:  # in the future: must not make later rows, in later chunks too, look late
            batch.at[row, "event_timestamp"] = NOW + pd.Timedelta("2D")
        elif kind == 4:
            batch.at[row, "customer_id"] = rng.choice([99, "c-9", None])
        elif kind == 5:
            batch.at[row, "transaction_id"] = rng.choice(["", None, "stored-1", "stored-2"])
        elif kind == 6:
            batch.at[row, "is_fraud"] = 1
        else:
            batch.at[row, "channel"] = "atm"
    # Across a boundary of 500-row chunks: a duplicate pair and a late row right after a chunk starts.
    batch.at[500, "transaction_id"] = "t499"
    batch.at[1000, "event_timestamp"] = events[999] - pd.Timedelta("2h")
    return batch


@pytest.mark.parametrize("chunk_rows", [97, 500, 777, 10_000])
def test_chunked_validation_quarantines_exactly_what_whole_batch_validation_does(
    tmp_path: Path, chunk_rows: int
) -> None:
    path = tmp_path / "batch.csv"
    messy_batch().to_csv(path, index=False)
    stored = tmp_path / "stored" / "part.parquet"
    stored.parent.mkdir()
    pd.DataFrame({"transaction_id": ["stored-1", "stored-2", "t7"]}).to_parquet(stored)
    options = {
        "batch_name": "messy",
        "id_column": "transaction_id",
        "references": REFERENCES,
        "timestamp_column": "event_timestamp",
        "now": NOW,
    }
    whole = validate_batch(
        read_raw_table(path, transactions_schema),
        transactions_schema,
        known_ids={"stored-1", "stored-2", "t7"},
        **options,
    )

    conflicts = find_id_conflicts(
        read_raw_ids(path, transactions_schema, "transaction_id"), [stored], "transaction_id"
    )
    tally = ChunkTally("messy")
    valid = []
    for result in validate_chunks(
        read_raw_chunks(path, transactions_schema, chunk_rows),
        transactions_schema,
        conflicts=conflicts,
        **options,
    ):
        tally.add(result)
        valid.append(result.valid)
    chunked = tally.result()

    assert 100 < len(whole.quarantined) < 300
    pd.testing.assert_series_equal(
        chunked.quarantined[REASON_COLUMN], whole.quarantined[REASON_COLUMN], check_dtype=False
    )
    assert chunked.quarantined.index.name == ROW_COLUMN
    assert chunked.reason_counts == whole.reason_counts
    assert chunked.invalid_fraction == whole.invalid_fraction
    pd.testing.assert_frame_equal(pd.concat(valid, ignore_index=True), whole.valid)


def test_ids_read_from_a_parquet_text_column_are_the_ids_validation_sees(tmp_path: Path) -> None:
    """Text ids straight from Parquet (no pass through pandas), integer ids parsed: both as the chunks read them."""
    batch = good_transactions(8)
    batch["transaction_id"] = ["t0", None, "", "t0", "x" * 40, "t5", "t6", "t7"]
    text = tmp_path / "text.parquet"
    batch.to_parquet(text)
    numbers = tmp_path / "numbers.parquet"
    batch.assign(transaction_id=range(100, 108)).to_parquet(numbers)

    for path in (text, numbers):
        ids = read_raw_ids(path, transactions_schema, "transaction_id", rows=3)
        chunks = pd.concat(read_raw_chunks(path, transactions_schema, 3), ignore_index=True)
        assert ids.type == pyarrow.string()
        assert ids.to_pylist() == [None if pd.isna(v) else v for v in chunks["transaction_id"]]
    assert read_raw_ids(numbers, transactions_schema, "transaction_id").to_pylist()[0] == "100"


def test_reference_ids_are_looked_up_whatever_collection_holds_them() -> None:
    values = pd.Series([1, 2, None, 7], dtype="Int64")
    for ids in ({1, 7}, [7, 1, 1], np.array([1, 7]), pd.Index([1, 7])):
        assert is_listed(as_lookup(ids), values).tolist() == [True, False, True, True]
    text = pd.Series(["a", "b", None], dtype=object)
    assert is_listed(as_lookup({"a"}), text).tolist() == [True, False, True]


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_a_missing_text_value_in_a_raw_file_is_missing_not_the_text_none(tmp_path: Path, suffix: str) -> None:
    """Read from a file, a null id or channel is quarantined as null: it once became the text "None", a valid id."""
    batch = good_transactions()
    batch.loc[2, "transaction_id"] = None
    batch.loc[3, "channel"] = None
    path = tmp_path / f"batch{suffix}"
    batch.to_parquet(path) if suffix == ".parquet" else batch.to_csv(path, index=False)

    result = validate(read_raw_table(path, transactions_schema))

    assert list(result.quarantined.index) == [2, 3]
    assert result.quarantined.at[2, REASON_COLUMN] == "transaction_id: not_nullable"
    assert result.quarantined.at[3, REASON_COLUMN] == "channel: not_nullable"
    assert "None" not in set(result.valid["transaction_id"])
