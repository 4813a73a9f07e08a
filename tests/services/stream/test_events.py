"""The transaction event's encoding: what a producer writes is the body ``POST /score`` takes, and decodes back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import orjson
import pandas as pd
import pytest

from services.scorer.transaction import Transaction
from services.stream.consumer import Entry
from services.stream.events import decision_json, decode, decode_entries, encode, transaction_json

MOMENTS = [
    datetime(2026, 12, 1, 10, 0, tzinfo=UTC),
    datetime(2026, 12, 1, 10, 0, 3, 4, tzinfo=UTC),
    datetime(2026, 12, 1, 10, 0, 3, 250_000, tzinfo=timezone(timedelta(hours=-3, minutes=-30))),
    # A published file's rows arrive as pandas Timestamps, which orjson does not write itself.
    pd.Timestamp("2026-12-01 10:00:00.123456789", tz="UTC"),
]


@pytest.mark.parametrize("moment", MOMENTS, ids=str)
def test_a_transaction_is_written_as_the_scoring_body_and_read_back_equal(moment: datetime) -> None:
    body = {
        "transaction_id": "t-1",
        "customer_id": 2**63 - 1,
        "merchant_id": 7,
        "amount": 12.34,
        "timestamp": moment,
        "channel": "online",
    }
    transaction = Transaction.model_validate(body)

    written = transaction_json(transaction)

    assert orjson.loads(written) == {**body, "timestamp": moment.isoformat()}
    assert decode(b"1-0", encode(written, "upstream")).transaction == Transaction.model_validate_json(written)


def test_a_decision_names_when_it_was_scored_in_iso_8601() -> None:
    scored_at = datetime(2026, 12, 1, 10, 0, 0, 1, tzinfo=UTC)
    result = {
        "fraud_probability": 0.25,
        "decision": "approve",
        "threshold": 0.5,
        "model_name": "fraud_scorer",
        "model_version": "3",
    }
    transaction = Transaction.model_validate(
        {
            "transaction_id": "t",
            "customer_id": 1,
            "merchant_id": 1,
            "amount": 1.0,
            "timestamp": scored_at,
            "channel": "chip",
        }
    )

    written = decision_json(result, scored_at, {"amount": 1.0, "channel": "chip", "txn_count_1h": None})

    assert orjson.loads(written)["scored_at"] == "2026-12-01T10:00:00.000001+00:00"
    event = decode(b"1-0", encode(transaction_json(transaction), "scorer", written))
    assert event.decision is not None
    assert event.decision.scored_at == scored_at
    assert event.decision.features == {"amount": 1.0, "channel": "chip", "txn_count_1h": None}


def _entry(i: int, transaction: bytes | None) -> Entry:
    """An entry of the transactions stream; without a transaction, one holding no field at all."""
    return Entry("transactions", f"{i}-0".encode(), encode(transaction, "upstream") if transaction else {})


def _body(i: int) -> bytes:
    return orjson.dumps(
        {
            "transaction_id": f"t-{i}",
            "customer_id": i + 1,
            "merchant_id": 7,
            "amount": 1.5 + i,
            "timestamp": "2026-12-01T10:00:00.000001+00:00",
            "channel": "online",
        }
    )


def test_a_batch_decodes_to_the_events_one_entry_at_a_time_gives() -> None:
    entries = [_entry(i, _body(i)) for i in range(50)]
    dead: list[tuple[Entry, str]] = []

    decoded = list(decode_entries(entries, dead))

    assert not dead
    assert [event for _, event in decoded] == [decode(e.id, e.fields or {}) for e in entries]


@pytest.mark.parametrize(
    ("field", "reason"),
    [
        # Two transactions side by side in one field would make a valid array one item too long.
        (_body(1) + b"," + _body(2), "transaction: "),
        (None, "schema: "),
        (_body(1).replace(b'"online"', b'"telepathy"'), "transaction: channel"),
    ],
    ids=["two-values", "no-fields", "bad-channel"],
)
def test_a_malformed_entry_in_a_batch_is_dead_lettered_and_shifts_no_other(
    field: bytes | None, reason: str
) -> None:
    entries = [_entry(0, _body(0)), _entry(1, field), _entry(2, _body(3))]
    dead: list[tuple[Entry, str]] = []

    decoded = list(decode_entries(entries, dead))

    assert [(entry.id, event.transaction.transaction_id) for entry, event in decoded] == [
        (b"0-0", "t-0"),
        (b"2-0", "t-3"),
    ]
    assert [(entry.id, text.startswith(reason)) for entry, text in dead] == [(b"1-0", True)]
