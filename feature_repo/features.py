from datetime import timedelta

from data_sources import (
    customer_activity_source,
    customer_profile_source,
    merchant_activity_source,
    merchant_profile_source,
    merchant_risk_source,
)
from entities import customer, merchant
from feast import FeatureView, Field
from feast.types import Float64, Int64, String

# How the customer has been spending: velocity and amounts over 1 h, 24 h and 7 days, as of (and including)
# each transaction. Each field's tags declare its window over the transaction stream; the batch pipeline and
# the stream processor both compute them from these tags (services/stream/windows.py), so they agree exactly.
# No TTL: state as of the last transaction never expires (an idle month is information), and Feast's online
# reads ignore TTLs while its offline joins apply them, so a TTL here would make training differ from serving.
customer_activity_fv = FeatureView(
    name="customer_activity",
    entities=[customer],
    ttl=timedelta(0),
    schema=[
        Field(name="txn_count_1h", dtype=Int64, tags={"aggregation": "count", "window": "1h"}),
        Field(name="txn_count_24h", dtype=Int64, tags={"aggregation": "count", "window": "24h"}),
        Field(name="txn_count_7d", dtype=Int64, tags={"aggregation": "count", "window": "7d"}),
        Field(
            name="amount_sum_1h",
            dtype=Float64,
            tags={"aggregation": "sum", "column": "amount", "window": "1h"},
        ),
        Field(
            name="amount_sum_24h",
            dtype=Float64,
            tags={"aggregation": "sum", "column": "amount", "window": "24h"},
        ),
        Field(
            name="amount_sum_7d",
            dtype=Float64,
            tags={"aggregation": "sum", "column": "amount", "window": "7d"},
        ),
        Field(
            name="amount_mean_1h",
            dtype=Float64,
            tags={"aggregation": "mean", "column": "amount", "window": "1h"},
        ),
        Field(
            name="amount_mean_24h",
            dtype=Float64,
            tags={"aggregation": "mean", "column": "amount", "window": "24h"},
        ),
        Field(
            name="amount_mean_7d",
            dtype=Float64,
            tags={"aggregation": "mean", "column": "amount", "window": "7d"},
        ),
        Field(
            name="distinct_merchants_24h",
            dtype=Int64,
            tags={"aggregation": "count_distinct", "column": "merchant_id", "window": "24h"},
        ),
        # Capped at 7 days, also when there is no earlier transaction.
        Field(
            name="seconds_since_prev_txn",
            dtype=Float64,
            tags={"aggregation": "seconds_since_previous", "window": "7d"},
        ),
        Field(name="last_txn_unix", dtype=Int64, tags={"aggregation": "unix_time"}),
    ],
    source=customer_activity_source,
    online=True,
    tags={"owner": "fraud", "kind": "streaming-aggregate", "aggregates": "transactions"},
)

# Who the cardholder is: attributes that do not change with activity.
customer_profile_fv = FeatureView(
    name="customer_profile",
    entities=[customer],
    ttl=timedelta(0),
    schema=[
        Field(name="home_region", dtype=String),
        Field(name="card_type", dtype=String),
        Field(name="credit_limit", dtype=Float64),
        Field(name="account_created_unix", dtype=Int64),
    ],
    source=customer_profile_source,
    online=True,
    tags={"owner": "fraud", "kind": "profile"},
)

# How busy the merchant has been, as of (and including) each transaction; windows declared as for customers.
merchant_activity_fv = FeatureView(
    name="merchant_activity",
    entities=[merchant],
    ttl=timedelta(0),
    schema=[
        Field(name="merchant_txn_count_1h", dtype=Int64, tags={"aggregation": "count", "window": "1h"}),
        Field(name="merchant_txn_count_24h", dtype=Int64, tags={"aggregation": "count", "window": "24h"}),
        Field(
            name="merchant_amount_mean_24h",
            dtype=Float64,
            tags={"aggregation": "mean", "column": "amount", "window": "24h"},
        ),
    ],
    source=merchant_activity_source,
    online=True,
    tags={"owner": "fraud", "kind": "streaming-aggregate", "aggregates": "transactions"},
)

# Fraud seen at the merchant over 30 days, from labels that had arrived by each daily snapshot (no leakage).
# Snapshots are daily: one older than two days means the pipeline stopped, which the service flags as stale.
merchant_risk_fv = FeatureView(
    name="merchant_risk",
    entities=[merchant],
    ttl=timedelta(days=2),
    schema=[
        Field(name="merchant_fraud_rate_30d", dtype=Float64),
        Field(name="merchant_labeled_txn_30d", dtype=Int64),
    ],
    source=merchant_risk_source,
    online=True,
    tags={"owner": "fraud", "kind": "label-aggregate"},
)

# What the merchant is: category and region.
merchant_profile_fv = FeatureView(
    name="merchant_profile",
    entities=[merchant],
    ttl=timedelta(0),
    schema=[
        Field(name="merchant_category", dtype=String),
        Field(name="merchant_region", dtype=String),
    ],
    source=merchant_profile_source,
    online=True,
    tags={"owner": "fraud", "kind": "profile"},
)
