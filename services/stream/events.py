"""The transaction event: what every entry of the transactions stream holds (schema ``transaction.v1``).

An entry of a Redis stream is a map of fields; ours are:

- ``schema``: ``transaction.v1``. A consumer refuses (dead-letters) any other value: a new version of the
  format gets a new name, and consumers learn it before producers send it.
- ``source``: who published it: ``scorer`` (``POST /score`` and ``/score_batch``, after scoring),
  ``stream-scorer`` (stream scoring), ``upstream`` (systems that decided elsewhere, through
  ``python -m services.stream.publish``), ``backfill`` (the batch pipeline's recent history), or ``shadow``
  (in the shadow stream only: the score of the model that did not decide, ``services/scorer/shadow.py``).
- ``transaction``: JSON, exactly the body ``POST /score`` takes (``services/scorer/transaction.py``):
  ``{"transaction_id", "customer_id", "merchant_id", "amount", "timestamp", "channel"}``, the timestamp in
  ISO 8601 with a time zone.
- ``decision`` (only when scored): JSON ``{"fraud_probability", "decision", "threshold", "model_name",
  "model_version", "scored_at", "features"}``; ``features`` holds the model's input as the model received
  it (numbers, ``null`` for a missing number, categories as text). This is the decision record.

Stream entry ids (``<milliseconds>-<sequence>``) are Redis's clock at publication.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, TypeAdapter, ValidationError

from services.scorer.transaction import Transaction

if TYPE_CHECKING:
    from services.stream.consumer import Entry

SCHEMA = "transaction.v1"
# The source of the shadow stream's entries: scores of the model that did not decide.
SHADOW = "shadow"
SOURCES = ("scorer", "stream-scorer", "upstream", "backfill", SHADOW)
# Where a transaction came from, when it was already decided elsewhere (no decision in the event).
UNDECIDED_SOURCES = frozenset({"upstream", "backfill"})


_TRANSACTION_LIST = TypeAdapter(list[Transaction])


class MalformedEvent(ValueError):
    """A stream entry that is not a valid transaction event; the message names the field and the reason."""


class Decision(BaseModel):
    """What the scorer decided for one transaction, with the model input it decided on."""

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    fraud_probability: float
    decision: Literal["approve", "decline"]
    threshold: float
    model_name: str
    model_version: str
    scored_at: AwareDatetime
    features: dict[str, float | int | str | None]


@dataclass(frozen=True)
class TransactionEvent:
    """A decoded entry of the transactions stream."""

    id: bytes
    transaction: Transaction
    source: str
    decision: Decision | None = None


def transaction_json(transaction: Transaction) -> bytes:
    """The transaction as ``POST /score`` takes it."""
    # The model's own field dict, in the body's order, and orjson's datetimes (ISO 8601, as ``isoformat``
    # writes them): half the cost of a new dict and ``isoformat`` per transaction, which every decision pays.
    return orjson.dumps(vars(transaction), default=_isoformat)


def _isoformat(value: Any) -> str:
    # Datetime subclasses orjson does not write itself (a pandas Timestamp from a published file).
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def decision_json(result: Mapping[str, Any], scored_at: datetime, features: Mapping[str, Any]) -> bytes:
    """A scorer's answer for one transaction (``ScoreResult`` fields) as the event's ``decision`` field."""
    return orjson.dumps(
        {
            "fraud_probability": result["fraud_probability"],
            "decision": result["decision"],
            "threshold": result["threshold"],
            "model_name": result["model_name"],
            "model_version": result["model_version"],
            "scored_at": scored_at,
            "features": features,
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )


def encode(transaction: bytes, source: str, decision: bytes | None = None) -> dict[bytes, bytes]:
    """The fields of one stream entry; ``transaction`` and ``decision`` are JSON (see the module docstring)."""
    if source not in SOURCES:
        raise ValueError(f"source {source!r} is not one of {SOURCES}")
    fields = {b"schema": SCHEMA.encode(), b"source": source.encode(), b"transaction": transaction}
    if decision is not None:
        fields[b"decision"] = decision
    return fields


def decode(
    entry_id: bytes, fields: Mapping[bytes, bytes], transaction: Transaction | None = None
) -> TransactionEvent:
    """A stream entry as an event; raises ``MalformedEvent`` naming what is wrong (never anything else).

    ``transaction``: the entry's transaction field, validated already (``decode_entries`` does a batch at once).
    """
    schema = fields.get(b"schema")
    if schema != SCHEMA.encode():
        raise MalformedEvent(f"schema: {_text(schema)!r} is not {SCHEMA!r}")
    source = _text(fields.get(b"source"))
    if source not in SOURCES:
        raise MalformedEvent(f"source: {source!r} is not one of {', '.join(SOURCES)}")
    if transaction is None:
        raw = fields.get(b"transaction")
        if raw is None:
            raise MalformedEvent("transaction: field missing")
        try:
            transaction = Transaction.model_validate_json(raw)
        except ValidationError as error:
            raise MalformedEvent(f"transaction: {_problems(error)}") from None
    decision = None
    if (raw_decision := fields.get(b"decision")) is not None:
        try:
            decision = Decision.model_validate_json(raw_decision)
        except ValidationError as error:
            raise MalformedEvent(f"decision: {_problems(error)}") from None
    return TransactionEvent(entry_id, transaction, source, decision)


def decode_entries(
    entries: Iterable[Entry], dead_letters: list[tuple[Entry, str]]
) -> Iterator[tuple[Entry, TransactionEvent]]:
    """Each entry with its event; a malformed entry goes to ``dead_letters`` with its reason instead."""
    entries = list(entries)
    transactions = _transactions_at_once(entries) or [None] * len(entries)
    for entry, transaction in zip(entries, transactions, strict=True):
        try:
            event = decode(entry.id, entry.fields or {}, transaction)
        except MalformedEvent as error:
            dead_letters.append((entry, str(error)))
            continue
        yield entry, event


def _transactions_at_once(entries: list[Entry]) -> list[Transaction] | None:
    """Every entry's transaction, validated as one JSON array: a sixth less than a call per entry, on every
    consumer's every entry. None when any is missing or invalid: each is then validated alone, for its reason."""
    raws = [(entry.fields or {}).get(b"transaction") for entry in entries]
    if not raws or None in raws:
        return None
    try:
        transactions = _TRANSACTION_LIST.validate_json(b"[" + b",".join(raws) + b"]")  # type: ignore[arg-type]
    except (ValidationError, TypeError):  # TypeError: a field that is not bytes
        return None
    # A field holding two values ("{...},{...}") would shift the others by one; an empty one breaks the array.
    return transactions if len(transactions) == len(raws) else None


def _problems(error: ValidationError) -> str:
    problems = error.errors(include_url=False, include_input=False)
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in problems)


def _text(value: bytes | None) -> str | None:
    return value.decode("utf-8", "replace") if value is not None else None


def raw_row(transaction: Transaction) -> dict[str, Any]:
    """The transaction as a row of the raw schema (``transaction_id``, ``event_timestamp``, ids, ``amount``,
    ``channel``): what the windows aggregate and what the landing zone receives."""
    return {
        "transaction_id": transaction.transaction_id,
        "event_timestamp": transaction.timestamp,
        "customer_id": transaction.customer_id,
        "merchant_id": transaction.merchant_id,
        "amount": transaction.amount,
        "channel": transaction.channel,
    }


def transactions_of(frame: Any) -> Iterator[Transaction]:
    """Rows of the raw schema (a DataFrame of validated transactions) as transactions, validated as ``POST
    /score`` validates a request."""
    for row in frame.itertuples(index=False):
        yield Transaction.model_validate(
            {
                "transaction_id": row.transaction_id,
                "customer_id": int(row.customer_id),
                "merchant_id": int(row.merchant_id),
                "amount": float(row.amount),
                "timestamp": row.event_timestamp,
                "channel": row.channel,
            }
        )
