"""The request the scorer accepts and how it maps onto Feast: the only fraud-specific module of the service.

A user with other data replaces this module: the request model, the Feast entity rows and request fields a
request becomes (``feature_rows``), the moment it happened (``event_times``, which staleness is judged against)
and its identifier (``request_ids``). Everything else in ``services/scorer`` reads the feature list from the
Feast feature service and the model from the model store.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, get_args

from pydantic import (
    AliasChoices,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
)
from pydantic_core import PydanticCustomError

# The channel vocabulary and the amount limit of every transaction, defined once here: the raw schema
# (flows/fraud_data/schema.py) imports them, since flows/ may import services/ but a bento never ships flows/.
Channel = Literal["chip", "contactless", "online"]
CHANNELS: tuple[str, ...] = get_args(Channel)
MAX_AMOUNT = 50_000.0
# Feast keys entities as int64: a larger id could never have features and would not serialize.
MAX_ENTITY_ID = 2**63 - 1
# A card terminal's clock may run a little ahead of ours; more than this is a bad timestamp.
MAX_CLOCK_SKEW = timedelta(minutes=5)
# Card transactions from before this are data errors, not history the features could cover.
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
BATCH_TOO_LARGE = "batch_too_large"


class Transaction(BaseModel):
    """One card transaction to score: who pays whom, how much, when and how."""

    # Strict fields: "12.5" is not an amount and 7.0 is not an id; a client sending them has a bug worth
    # surfacing. Extra fields (a replayed raw row's is_fraud, say) are ignored, never used.
    model_config = ConfigDict(extra="ignore", frozen=True)

    transaction_id: str = Field(strict=True, min_length=1, max_length=128, description="Unique id.")
    customer_id: int = Field(strict=True, gt=0, le=MAX_ENTITY_ID, description="The paying cardholder.")
    merchant_id: int = Field(strict=True, gt=0, le=MAX_ENTITY_ID, description="The merchant being paid.")
    amount: float = Field(
        strict=True,
        gt=0,
        le=MAX_AMOUNT,
        allow_inf_nan=False,
        description=f"Amount, 0 < amount <= {MAX_AMOUNT:,.0f}.",
    )
    timestamp: AwareDatetime = Field(
        validation_alias=AliasChoices("timestamp", "event_timestamp"),
        description="When it happened: ISO 8601 with a time zone (raw rows' event_timestamp is accepted).",
    )
    channel: Channel

    @field_validator("timestamp", mode="wrap")
    @classmethod
    def _plausible_iso_time(cls, value: Any, parse: ValidatorFunctionWrapHandler) -> datetime:
        # One validator for both checks: each Python validator adds its cost to every row of a batch.
        # Epoch numbers are ambiguous (seconds? milliseconds?): only ISO 8601 text is accepted.
        if not isinstance(value, str | datetime):
            raise ValueError("must be an ISO 8601 date-time string with a time zone")
        parsed = parse(value)
        if parsed > datetime.now(UTC) + MAX_CLOCK_SKEW:
            raise ValueError(f"is more than {MAX_CLOCK_SKEW} in the future")
        if parsed < EARLIEST:
            raise ValueError(f"is before {EARLIEST:%Y-%m-%d}")
        return parsed


class TransactionBatch(BaseModel):
    """Transactions scored in one call, at most the service's max_batch_size (RTML_MAX_BATCH_SIZE)."""

    # The limit is a setting, so it is passed as validation context: ``context={"max_batch_size": ...}``.
    model_config = ConfigDict(extra="forbid")

    transactions: list[Transaction] = Field(min_length=1)

    @field_validator("transactions", mode="before")
    @classmethod
    def _within_limit(cls, value: Any, info: ValidationInfo) -> Any:
        # Checked before the items are validated, so an oversized batch costs no per-item work.
        limit = (info.context or {}).get("max_batch_size")
        if limit is not None and isinstance(value, list) and len(value) > limit:
            raise PydanticCustomError(
                BATCH_TOO_LARGE,
                "holds {size} transactions; at most {limit} are accepted per call",
                {"size": len(value), "limit": limit},
            )
        return value


def feature_rows(transactions: Sequence[Transaction]) -> dict[str, list[Any]]:
    """Feast entity keys and the on-demand view's request fields, one column each, one row per transaction."""
    return {
        "customer_id": [t.customer_id for t in transactions],
        "merchant_id": [t.merchant_id for t in transactions],
        "amount": [t.amount for t in transactions],
        "channel": [t.channel for t in transactions],
        "transaction_unix": [int(t.timestamp.timestamp()) for t in transactions],
    }


def event_times(transactions: Sequence[Transaction]) -> list[float]:
    """When each transaction happened, in epoch seconds: features older than their view's TTL are stale."""
    return [t.timestamp.timestamp() for t in transactions]


def request_ids(transactions: Sequence[Transaction]) -> list[str]:
    """The id each answer and each logged prediction carries."""
    return [t.transaction_id for t in transactions]
