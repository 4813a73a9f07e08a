import os
from pathlib import Path

from feast import Field, FileSource, RequestSource
from feast.types import Float64, Int64, String

# Feature tables are partitioned Parquet written by the feature pipeline; the folder comes from
# the environment so the repository never depends on the current directory.
OFFLINE_DIR = Path(
    os.environ.get("FEAST_OFFLINE_DIR", Path(__file__).resolve().parent.parent / ".rtml/data/offline")
)


def _table(name: str) -> str:
    return str(OFFLINE_DIR / name / "**" / "*.parquet")


# Per-customer rolling activity, one row per transaction, stamped just after it.
customer_activity_source = FileSource(
    name="customer_activity_source",
    path=_table("customer_activity"),
    timestamp_field="event_timestamp",
)

# Static cardholder attributes, stamped at account creation.
customer_profile_source = FileSource(
    name="customer_profile_source",
    path=_table("customer_profile"),
    timestamp_field="event_timestamp",
)

# Per-merchant rolling activity, one row per transaction, stamped just after it.
merchant_activity_source = FileSource(
    name="merchant_activity_source",
    path=_table("merchant_activity"),
    timestamp_field="event_timestamp",
)

# Daily per-merchant fraud rates from labels that had arrived by each snapshot.
merchant_risk_source = FileSource(
    name="merchant_risk_source",
    path=_table("merchant_risk"),
    timestamp_field="event_timestamp",
)

# Static merchant attributes, stamped at onboarding.
merchant_profile_source = FileSource(
    name="merchant_profile_source",
    path=_table("merchant_profile"),
    timestamp_field="event_timestamp",
)

# Fields of the transaction being scored, known only at request time.
transaction_request = RequestSource(
    name="transaction_request",
    schema=[
        Field(name="amount", dtype=Float64),
        Field(name="channel", dtype=String),
        Field(name="transaction_unix", dtype=Int64),
    ],
)
