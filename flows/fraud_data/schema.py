"""The raw data's vocabulary and schema: what a valid customer, merchant, transaction and label look like."""

import pandas as pd
import pandera.pandas as pa

# The channels and the amount limit are also the scoring service's request rules: defined once, in its request
# model, since a bento never ships flows/.
from services.scorer.transaction import CHANNELS, MAX_AMOUNT

REGIONS = ("north", "south", "east", "west", "central", "abroad")
CARD_TYPES = ("credit", "debit", "prepaid")
MERCHANT_CATEGORIES = (
    "grocery",
    "fuel",
    "restaurants",
    "fashion",
    "electronics",
    "travel",
    "digital_goods",
    "gaming",
    "health",
    "home",
)

TIMESTAMP = pd.DatetimeTZDtype(unit="us", tz="UTC")
# Column metadata read by flows/feature_store/validation.py: a value later than the validation time (plus a tolerance)
# is quarantined. The check needs the time of validation, so it is added there, not frozen here.
NOT_IN_FUTURE = {"not_in_future": True}


def _unique_id() -> pa.Column:
    # Every copy of an id but the first is the duplicate: the first stays valid.
    return pa.Column("int64", pa.Check.gt(0), unique=True, report_duplicates="exclude_first")


customers_schema = pa.DataFrameSchema(
    {
        "customer_id": _unique_id(),
        "account_created_at": pa.Column(TIMESTAMP, metadata=NOT_IN_FUTURE),
        "home_region": pa.Column(str, pa.Check.isin(REGIONS)),
        "card_type": pa.Column(str, pa.Check.isin(CARD_TYPES)),
        "credit_limit": pa.Column("float64", pa.Check.gt(0)),
    },
    name="customers",
)

merchants_schema = pa.DataFrameSchema(
    {
        "merchant_id": _unique_id(),
        "onboarded_at": pa.Column(TIMESTAMP, metadata=NOT_IN_FUTURE),
        "merchant_category": pa.Column(str, pa.Check.isin(MERCHANT_CATEGORIES)),
        "merchant_region": pa.Column(str, pa.Check.isin(REGIONS)),
    },
    name="merchants",
)

transactions_schema = pa.DataFrameSchema(
    {
        "transaction_id": pa.Column(
            str, pa.Check.str_length(min_value=1), unique=True, report_duplicates="exclude_first"
        ),
        "event_timestamp": pa.Column(TIMESTAMP, metadata=NOT_IN_FUTURE),
        "customer_id": pa.Column("int64", pa.Check.gt(0)),
        "merchant_id": pa.Column("int64", pa.Check.gt(0)),
        "amount": pa.Column("float64", [pa.Check.gt(0), pa.Check.le(MAX_AMOUNT)]),
        "channel": pa.Column(str, pa.Check.isin(CHANNELS)),
        # Null until the label arrives.
        "is_fraud": pa.Column("Int64", pa.Check.isin([0, 1]), nullable=True),
        "label_timestamp": pa.Column(TIMESTAMP, nullable=True),
        # Only the generator knows the true fraud probability; a user's own files leave it out.
        "oracle_probability": pa.Column("float64", pa.Check.in_range(0, 1), nullable=True, required=False),
    },
    checks=[
        pa.Check(
            lambda df: (
                df["label_timestamp"].isna()
                | df["event_timestamp"].isna()
                | (df["label_timestamp"] >= df["event_timestamp"])
            ),
            name="label_not_before_event",
            error="label_timestamp: earlier than event_timestamp",
        ),
        # A label without its arrival time (or the reverse) cannot be placed in time for training.
        pa.Check(
            lambda df: df["is_fraud"].isna() == df["label_timestamp"].isna(),
            name="label_with_timestamp",
            error="is_fraud: set without label_timestamp, or the reverse",
        ),
    ],
    name="transactions",
)

# A label that arrives on its own, after its transaction (a chargeback, a confirmed-genuine mark). The rules that
# need other tables (its transaction, earlier labels) are added by flows/feature_store/labels.py.
labels_schema = pa.DataFrameSchema(
    {
        "transaction_id": pa.Column(
            str, pa.Check.str_length(min_value=1), unique=True, report_duplicates="exclude_first"
        ),
        "is_fraud": pa.Column("int64", pa.Check.isin([0, 1])),
        "label_timestamp": pa.Column(TIMESTAMP, metadata=NOT_IN_FUTURE),
    },
    name="labels",
)
