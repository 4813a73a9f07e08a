import os
from pathlib import Path

from feast import Field, FileSource, RequestSource
from feast.data_source import DataSource
from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource
from feast.types import Float64, Int64, String

# Feature tables are partitioned Parquet written by the feature pipeline; the folder comes from
# the environment so the repository never depends on the current directory.
OFFLINE_DIR = Path(
    os.environ.get("FEAST_OFFLINE_DIR", Path(__file__).resolve().parent.parent / ".rtml/data/offline")
)

# The offline store that reads the tables: DuckDB in this process (feature_store.yaml), or Spark
# (feature_store_spark.yaml), whose store only reads Spark sources; both read the same Parquet files.
OFFLINE_STORE = os.environ.get("FEAST_OFFLINE_STORE", "duckdb")


def _table(name: str) -> DataSource:
    if OFFLINE_STORE == "spark":
        # Spark reads the table's folder and discovers its date= partitions itself.
        return SparkSource(
            name=f"{name}_source",
            path=str(OFFLINE_DIR / name),
            file_format="parquet",
            timestamp_field="event_timestamp",
        )
    return FileSource(
        name=f"{name}_source",
        path=str(OFFLINE_DIR / name / "**" / "*.parquet"),
        timestamp_field="event_timestamp",
    )


# Per-customer rolling activity, one row per transaction, stamped just after it.
customer_activity_source = _table("customer_activity")

# Static cardholder attributes, stamped at account creation.
customer_profile_source = _table("customer_profile")

# Per-merchant rolling activity, one row per transaction, stamped just after it.
merchant_activity_source = _table("merchant_activity")

# Daily per-merchant fraud rates from labels that had arrived by each snapshot.
merchant_risk_source = _table("merchant_risk")

# Static merchant attributes, stamped at onboarding.
merchant_profile_source = _table("merchant_profile")

# Fields of the transaction being scored, known only at request time.
transaction_request = RequestSource(
    name="transaction_request",
    schema=[
        Field(name="amount", dtype=Float64),
        Field(name="channel", dtype=String),
        Field(name="transaction_unix", dtype=Int64),
    ],
)
