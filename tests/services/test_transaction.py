"""The request schema refuses every kind of bad transaction, naming the field, and maps good ones onto Feast."""

from __future__ import annotations

import ast
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from flows.fraud_data import schema
from model_store.settings import REPO_ROOT
from services.scorer.transaction import (
    BATCH_TOO_LARGE,
    CHANNELS,
    MAX_AMOUNT,
    Transaction,
    TransactionBatch,
    event_times,
    feature_rows,
    request_ids,
)

GOOD: dict[str, Any] = {
    "transaction_id": "tx-1",
    "customer_id": 17,
    "merchant_id": 4,
    "amount": 120.5,
    "timestamp": "2026-01-02T03:04:05+00:00",
    "channel": "online",
}


def errors_of(payload: Any) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as caught:
        Transaction.model_validate_json(json.dumps(payload))
    return [(".".join(map(str, e["loc"])), e["msg"]) for e in caught.value.errors()]


def test_the_raw_schema_takes_its_vocabulary_from_the_request_model() -> None:
    assert schema.CHANNELS is CHANNELS and schema.MAX_AMOUNT is MAX_AMOUNT
    assert Transaction.model_json_schema()["properties"]["channel"]["enum"] == list(CHANNELS)


def test_no_other_module_lists_the_channels() -> None:
    """A second list of the channels would drift from the one the service and the raw schema share."""
    owner = "services/scorer/transaction.py"
    found = []
    for folder in ("flows", "services", "model_store", "deploy", "feature_repo"):
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.Tuple | ast.List | ast.Set):
                    continue
                if {e.value for e in node.elts if isinstance(e, ast.Constant)} == set(CHANNELS):
                    found.append(f"{path.relative_to(REPO_ROOT).as_posix()}:{node.lineno}")
    assert [f for f in found if not f.startswith(owner)] == []


def test_a_good_transaction_maps_onto_feast_rows() -> None:
    tx = Transaction.model_validate_json(json.dumps(GOOD))
    other = Transaction.model_validate(
        {**GOOD, "transaction_id": "tx-2", "event_timestamp": GOOD["timestamp"]}
    )
    rows = feature_rows([tx, other])
    assert rows == {
        "customer_id": [17, 17],
        "merchant_id": [4, 4],
        "amount": [120.5, 120.5],
        "channel": ["online", "online"],
        "transaction_unix": [1767323045, 1767323045],
    }
    assert event_times([tx]) == [1767323045.0]
    assert request_ids([tx, other]) == ["tx-1", "tx-2"]


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"amount": -5}, "amount", "greater than 0"),
        ({"amount": 0}, "amount", "greater than 0"),
        ({"amount": 50_000.01}, "amount", "less than or equal to 50000"),
        ({"amount": "12.5"}, "amount", "valid number"),
        ({"amount": True}, "amount", "valid number"),
        ({"customer_id": "17"}, "customer_id", "valid integer"),
        ({"customer_id": 17.0}, "customer_id", "valid integer"),
        ({"customer_id": 0}, "customer_id", "greater than 0"),
        ({"merchant_id": 2**63}, "merchant_id", "less than or equal to"),
        ({"channel": "atm"}, "channel", "'chip', 'contactless' or 'online'"),
        ({"transaction_id": ""}, "transaction_id", "at least 1 character"),
        ({"transaction_id": 5}, "transaction_id", "valid string"),
        ({"timestamp": "2026-01-02T03:04:05"}, "timestamp", "timezone"),
        ({"timestamp": 1767323045}, "timestamp", "ISO 8601"),
        ({"timestamp": "yesterday"}, "timestamp", "valid datetime"),
        ({"timestamp": "1999-12-31T23:00:00Z"}, "timestamp", "before 2000-01-01"),
        (
            {"timestamp": (datetime.now(UTC) + timedelta(hours=1)).isoformat()},
            "timestamp",
            "in the future",
        ),
    ],
)
def test_bad_fields_are_refused_by_name_and_reason(change: dict[str, Any], field: str, reason: str) -> None:
    problems = errors_of({**GOOD, **change})
    assert [name for name, _ in problems] == [field]
    assert reason in problems[0][1]


@pytest.mark.parametrize(
    "missing", ["transaction_id", "customer_id", "merchant_id", "amount", "timestamp", "channel"]
)
def test_each_required_field_is_named_when_missing(missing: str) -> None:
    payload = {k: v for k, v in GOOD.items() if k != missing}
    assert errors_of(payload) == [(missing, "Field required")]


def test_batch_limit_is_checked_before_the_items() -> None:
    bad_items = [{"amount": -1}] * 5  # would give 5 x 6 errors if the items were validated
    with pytest.raises(ValidationError) as caught:
        TransactionBatch.model_validate_json(
            json.dumps({"transactions": bad_items}), context={"max_batch_size": 4}
        )
    (error,) = caught.value.errors()
    assert error["type"] == BATCH_TOO_LARGE and error["loc"] == ("transactions",)
    assert "holds 5 transactions; at most 4" in error["msg"]
    batch = TransactionBatch.model_validate_json(
        json.dumps({"transactions": [GOOD] * 4}), context={"max_batch_size": 4}
    )
    assert len(batch.transactions) == 4


def test_batch_shape_errors_name_the_field() -> None:
    for body, field in (
        ({"transactions": []}, "transactions"),
        ({"transactions": "x"}, "transactions"),
        ({}, "transactions"),
    ):
        with pytest.raises(ValidationError) as caught:
            TransactionBatch.model_validate_json(json.dumps(body))
        assert caught.value.errors()[0]["loc"] == (field,)
