"""Feast's Spark offline store, in local mode, returns the training rows DuckDB's does from the same tables."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pandas as pd
import pytest
from feast import FeatureStore

# Imported with the module, not first during the test: its import installs a warnings filter in front of pytest's.
from feast.infra.offline_stores.contrib.spark_offline_store.spark import SparkOfflineStoreConfig
from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

from flows.feature_store.definitions import apply_definitions
from flows.feature_store.offline_store import max_timestamp
from flows.training.dataset import (
    entity_frame,
    read_feature_spec,
    read_labeled_transactions,
    retrieve_features,
)
from model_store.settings import Settings, clear_settings, get_settings
from tests.conftest import delete_project_keys, unique_project

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("java") is None and "JAVA_HOME" not in os.environ,
        reason="Spark needs Java 17 or later: `make services` installs Debian's default-jre-headless (as root)",
    ),
    # Feast says so on every Spark source and retrieval; it is the store under test.
    pytest.mark.filterwarnings("ignore:The spark .* is an experimental feature:RuntimeWarning"),
]

# Local mode sized for a test on two shared cores; a driver of a real cluster names its master the same way.
LOCAL_SPARK = " ".join(
    [
        "--master local[2]",
        # A JVM that lives for one test spends more on optimising compilation than it gets back.
        "--driver-java-options -XX:TieredStopAtLevel=1",
        "--conf spark.ui.enabled=false",
        "--conf spark.ui.showConsoleProgress=false",
        "--conf spark.sql.shuffle.partitions=2",
        # Lists each table's date= folders in the driver instead of in a Spark job per table.
        "--conf spark.sql.sources.parallelPartitionDiscovery.threshold=100000",
        "pyspark-shell",
    ]
)

# Every ninth labelled transaction: about 2,000 rows spread over the whole history.
EVERY = 9
LATE = 50


@pytest.fixture
def spark_settings(pipeline_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """The pipeline fixture's data under a Feast project of its own, applied with Spark sources."""
    monkeypatch.setenv("RTML_FEAST_PROJECT", unique_project("spark"))
    monkeypatch.setenv("RTML_OFFLINE_STORE", "spark")
    monkeypatch.setenv("PYSPARK_SUBMIT_ARGS", LOCAL_SPARK)
    clear_settings()
    settings = get_settings()
    # Registered for restoring: the stores export these into the process for Feast to read.
    for key, value in settings.feast_env().items():
        monkeypatch.setenv(key, value)
    apply_definitions(settings)
    yield settings
    from pyspark.sql import SparkSession

    if (session := SparkSession.getActiveSession()) is not None:
        session.stop()
    delete_project_keys(settings.feast_project)
    clear_settings()


def training_rows(store: FeatureStore, service: str, entities: pd.DataFrame) -> pd.DataFrame:
    """The feature service's training rows for ``entities``, as the training flow retrieves them."""
    spec = read_feature_spec(store, service)
    # Feast's Spark store rewrites the entity frame's timestamp column in place.
    return retrieve_features(store, spec, entities.copy())


def test_spark_returns_the_training_rows_duckdb_does(
    pipeline_settings: Settings, spark_settings: Settings
) -> None:
    transactions, _, _ = read_labeled_transactions(pipeline_settings.validated_dir)
    sample = transactions.iloc[::EVERY]
    # Copies as if scored three days after the last merchant risk snapshot, when every one is older than the
    # view's two-day TTL: Feast's file store drops such rows, DuckDB's keeps them with those features missing.
    late = sample.tail(LATE).assign(
        event_timestamp=max_timestamp(pipeline_settings.offline_dir / "merchant_risk") + pd.Timedelta(days=3),
        transaction_id=lambda frame: frame["transaction_id"] + "-late",
    )
    entities = entity_frame(pd.concat([sample, late], ignore_index=True))

    duckdb_store, spark_store = pipeline_settings.feature_store(), spark_settings.feature_store()
    assert isinstance(spark_store.config.offline_store, SparkOfflineStoreConfig)
    assert isinstance(spark_store.get_data_source("customer_activity_source"), SparkSource)
    duckdb_rows = training_rows(duckdb_store, pipeline_settings.feature_service, entities)
    spark_rows = training_rows(spark_store, spark_settings.feature_service, entities)

    # The same instants: DuckDB hands pandas the tables' microseconds, Spark nanoseconds.
    assert spark_rows["event_timestamp"].dt.unit == "ns"
    spark_rows["event_timestamp"] = spark_rows["event_timestamp"].dt.as_unit("us")
    pd.testing.assert_frame_equal(spark_rows, duckdb_rows, check_exact=True)
    assert len(duckdb_rows) == len(entities)
    # What the comparison covered: rows with every feature, a first transaction with no earlier activity, and
    # the late rows whose risk snapshots the TTL dropped while their TTL-less profiles and activity remain.
    assert duckdb_rows.notna().all(axis=1).any()
    assert duckdb_rows["txn_count_24h"].isna().any()
    late_rows = duckdb_rows[duckdb_rows["transaction_id"].str.endswith("-late")]
    assert len(late_rows) == LATE
    assert late_rows["merchant_fraud_rate_30d"].isna().all()
    assert late_rows[["merchant_category", "txn_count_7d"]].notna().all().all()
