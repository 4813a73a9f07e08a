"""The raw schema: the pandera schemas agree with the documented contract and enforce its rules."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pandera.pandas as pa
import pytest

from flows.feature_store.ingestion import read_raw_table
from flows.feature_store.validation import validate_batch
from flows.fraud_data.schema import (
    CARD_TYPES,
    CHANNELS,
    MAX_AMOUNT,
    MERCHANT_CATEGORIES,
    REGIONS,
    customers_schema,
    labels_schema,
    merchants_schema,
    transactions_schema,
)
from model_store.settings import REPO_ROOT

SCHEMAS = {
    "customers": customers_schema,
    "merchants": merchants_schema,
    "transactions": transactions_schema,
    "labels": labels_schema,
}
# How docs/architecture.md spells each type.
DOC_TYPES = {
    "int64": "int64",
    "float64": "float64",
    "string": "str",
    "timestamp (UTC)": "datetime64[us, UTC]",
    "int (0/1)": "Int64",
}


def documented_columns() -> dict[str, list[tuple[str, str, str]]]:
    """(column, type, rule) per raw file, read from the raw data table of docs/architecture.md."""
    text = (REPO_ROOT / "docs" / "architecture.md").read_text()
    section = text.split("## Raw data", 1)[1].split("\n## ", 1)[0]
    tables: dict[str, list[tuple[str, str, str]]] = {}
    current = ""
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[1].startswith("`"):
            continue
        if cells[0]:
            current = re.match(r"`(\w+)", cells[0]).group(1)
        tables.setdefault(current, []).append((cells[1].strip("`"), cells[2], cells[3]))
    return tables


def test_schemas_match_the_documented_raw_tables() -> None:
    documented = documented_columns()

    assert set(documented) == set(SCHEMAS)
    for table, rows in documented.items():
        schema = SCHEMAS[table]
        assert [name for name, _, _ in rows] == list(schema.columns), table
        for name, doc_type, rule in rows:
            column = schema.columns[name]
            base_type, _, nullable = doc_type.partition(", ")
            assert str(column.dtype) == DOC_TYPES[base_type], f"{table}.{name}"
            assert column.nullable == (nullable == "nullable"), f"{table}.{name}"
            not_in_future = (column.metadata or {}).get("not_in_future", False)
            assert not_in_future == ("not in the future" in rule), f"{table}.{name}"
            assert column.unique == rule.startswith("unique"), f"{table}.{name}"


def failed_checks(schema: pa.DataFrameSchema, frame: pd.DataFrame) -> set[tuple[str, str]]:
    """(column, check) of every failure of the bare schema on ``frame``."""
    try:
        schema.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as exc:
        return set(zip(exc.failure_cases["column"], exc.failure_cases["check"], strict=True))
    return set()


def timestamps(*values: str) -> pd.Series:
    return pd.Series(pd.to_datetime(list(values), utc=True)).dt.as_unit("us")


def customers() -> pd.DataFrame:
    n = len(REGIONS)
    return pd.DataFrame(
        {
            "customer_id": range(1, n + 1),
            "account_created_at": timestamps(*[f"202{i}-01-01" for i in range(n)]),
            "home_region": list(REGIONS),
            "card_type": [CARD_TYPES[i % len(CARD_TYPES)] for i in range(n)],
            "credit_limit": [500.0 * (i + 1) for i in range(n)],
        }
    )


def merchants() -> pd.DataFrame:
    n = len(MERCHANT_CATEGORIES)
    return pd.DataFrame(
        {
            "merchant_id": range(1, n + 1),
            "onboarded_at": timestamps(*["2019-05-01"] * n),
            "merchant_category": list(MERCHANT_CATEGORIES),
            "merchant_region": [REGIONS[i % len(REGIONS)] for i in range(n)],
        }
    )


def transactions() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "transaction_id": ["a", "b", "c"],
            "event_timestamp": timestamps("2026-01-01 10:00", "2026-01-01 10:05", "2026-01-01 11:00"),
            "customer_id": [1, 2, 1],
            "merchant_id": [3, 3, 4],
            "amount": [0.01, 120.0, MAX_AMOUNT],
            "channel": list(CHANNELS),
            "is_fraud": pd.array([1, 0, None], dtype="Int64"),
            "label_timestamp": timestamps("2026-01-20", "2026-01-08", "NaT"),
            "oracle_probability": [0.7, 0.01, None],
        }
    )


def labels() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "transaction_id": ["a", "b"],
            "is_fraud": [1, 0],
            "label_timestamp": timestamps("2026-01-20", "2026-01-08"),
        }
    )


@pytest.mark.parametrize(
    "schema, frame",
    [
        (customers_schema, customers),
        (merchants_schema, merchants),
        (transactions_schema, transactions),
        (labels_schema, labels),
    ],
    ids=["customers", "merchants", "transactions", "labels"],
)
def test_schema_accepts_every_documented_value(schema: pa.DataFrameSchema, frame) -> None:
    assert failed_checks(schema, frame()) == set()


def test_transactions_without_the_generator_only_column_are_accepted() -> None:
    assert failed_checks(transactions_schema, transactions().drop(columns="oracle_probability")) == set()


def test_customers_rules() -> None:
    frame = customers()
    frame.loc[1, "customer_id"] = 1
    frame.loc[2, "customer_id"] = 0
    frame.loc[3, ["home_region", "card_type", "credit_limit"]] = ["mars", "gold", 0.0]

    assert failed_checks(customers_schema, frame) == {
        ("customer_id", "field_uniqueness"),
        ("customer_id", "greater_than(0)"),
        ("home_region", f"isin({REGIONS})"),
        ("card_type", f"isin({CARD_TYPES})"),
        ("credit_limit", "greater_than(0)"),
    }


def test_merchants_rules() -> None:
    frame = merchants()
    frame.loc[0, ["merchant_category", "merchant_region"]] = ["casino", "atlantis"]
    frame.loc[1, "merchant_id"] = -4

    assert failed_checks(merchants_schema, frame) == {
        ("merchant_category", f"isin({MERCHANT_CATEGORIES})"),
        ("merchant_region", f"isin({REGIONS})"),
        ("merchant_id", "greater_than(0)"),
    }


def test_transactions_rules() -> None:
    frame = transactions()
    frame.loc[0, ["amount", "channel"]] = [MAX_AMOUNT + 1, "atm"]
    frame.loc[1, ["transaction_id", "amount", "oracle_probability"]] = ["a", 0.0, -0.1]
    frame.loc[2, "is_fraud"] = 0  # a label without its arrival time
    frame.loc[0, "label_timestamp"] = frame.loc[0, "event_timestamp"] - pd.Timedelta("1s")

    failures = failed_checks(transactions_schema, frame)

    assert {
        ("amount", f"less_than_or_equal_to({MAX_AMOUNT})"),
        ("amount", "greater_than(0)"),
        ("channel", f"isin({CHANNELS})"),
        ("transaction_id", "field_uniqueness"),
        ("oracle_probability", "in_range(0, 1)"),
    } <= failures
    assert {check for _, check in failures} >= {
        "label_timestamp: earlier than event_timestamp",
        "is_fraud: set without label_timestamp, or the reverse",
    }


def test_labels_rules() -> None:
    frame = labels()
    frame.loc[1, "transaction_id"] = "a"
    frame.loc[0, "is_fraud"] = 2

    assert failed_checks(labels_schema, frame) == {
        ("transaction_id", "field_uniqueness"),
        ("is_fraud", "isin([0, 1])"),
    }
    empty_id = labels().assign(transaction_id=["", "b"])
    assert failed_checks(labels_schema, empty_id) == {("transaction_id", "str_length(1, None)")}


def test_a_label_needs_its_arrival_time() -> None:
    frame = transactions()
    frame.loc[1, "label_timestamp"] = pd.NaT

    failures = failed_checks(transactions_schema, frame)

    assert "is_fraud: set without label_timestamp, or the reverse" in {check for _, check in failures}


@pytest.mark.parametrize("drifted", [False, True], ids=["steady", "drifted"])
def test_generated_data_validates_with_nothing_quarantined(tmp_path: Path, drifted: bool) -> None:
    from flows.fraud_data.generator import DriftSpec, GeneratorConfig, generate_raw_data, write_raw_data

    start = pd.Timestamp("2026-01-01", tz="UTC")
    drift = DriftSpec(start + pd.Timedelta(days=20), 1.3, 0.3, new_fraud_pattern=True) if drifted else None
    config = GeneratorConfig(
        n_transactions=20_000, n_customers=1_000, n_merchants=100, start=start, days=30, drift=drift
    )
    raw_dir = tmp_path / "raw"
    write_raw_data(generate_raw_data(config), raw_dir, "batch_001")

    tables = {}
    for name, id_column in (("customers", "customer_id"), ("merchants", "merchant_id")):
        frame = read_raw_table(raw_dir / f"{name}.parquet", SCHEMAS[name])
        result = validate_batch(frame, SCHEMAS[name], batch_name=name, id_column=id_column)
        assert result.reason_counts == {}, name
        tables[name] = result.valid
    transactions = read_raw_table(raw_dir / "transactions" / "batch_001.parquet", transactions_schema)
    as_csv = tmp_path / "batch_001.csv"
    pd.read_parquet(raw_dir / "transactions" / "batch_001.parquet").to_csv(as_csv, index=False)
    pd.testing.assert_frame_equal(
        read_raw_table(as_csv, transactions_schema), transactions, check_exact=False
    )
    result = validate_batch(
        transactions,
        transactions_schema,
        batch_name="batch_001",
        known_ids=set(),
        id_column="transaction_id",
        references={
            "customer_id": set(tables["customers"]["customer_id"]),
            "merchant_id": set(tables["merchants"]["merchant_id"]),
        },
        timestamp_column="event_timestamp",
    )

    assert result.reason_counts == {}
    assert len(result.valid) == len(transactions) >= 20_000
    transactions_schema.validate(result.valid)
