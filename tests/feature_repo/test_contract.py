"""Contract: what the pipeline writes has exactly the columns and types the Feast definitions declare."""

from __future__ import annotations

import pandas as pd
import pytest
from feast.types import Float64, Int64, String

from flows.feature_store.offline_store import read_partitions
from model_store.settings import Settings

DTYPES = {Int64: "int64", Float64: "float64", String: "object"}
VIEWS = ["customer_activity", "customer_profile", "merchant_activity", "merchant_risk", "merchant_profile"]


@pytest.mark.parametrize("view", VIEWS)
def test_offline_table_matches_feature_view(pipeline_settings: Settings, view: str) -> None:
    store = pipeline_settings.feature_store()
    fv = store.get_feature_view(view)
    table = read_partitions(pipeline_settings.offline_dir / view)
    declared = {f.name: DTYPES[f.dtype] for f in fv.features}
    declared.update({c.name: DTYPES[c.dtype] for c in fv.entity_columns})
    written = {c: str(t) for c, t in table.dtypes.items() if c != fv.batch_source.timestamp_field}
    assert written == declared
    assert str(table[fv.batch_source.timestamp_field].dtype) == "datetime64[us, UTC]"
    assert not table[list(declared)].isna().any().any(), f"{view} has nulls"


def test_feature_service_names_exactly_the_model_inputs(pipeline_settings: Settings) -> None:
    """Every feature the service names resolves, online and offline, to a column of the same name."""
    store = pipeline_settings.feature_store()
    service = store.get_feature_service(pipeline_settings.feature_service)
    names = [f.name for p in service.feature_view_projections for f in p.features]
    assert len(names) == len(set(names)), "feature names must be unique across views"
    everything = read_partitions(pipeline_settings.validated_dir / "transactions").sort_values(
        "event_timestamp"
    )
    validated = everything.iloc[len(everything) // 2 :: max(1, len(everything) // 40)].reset_index(drop=True)
    entity_df = validated[["customer_id", "merchant_id", "event_timestamp", "amount", "channel"]].assign(
        transaction_unix=(validated["event_timestamp"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta("1s")
    )
    offline = store.get_historical_features(entity_df=entity_df, features=service).to_df()
    assert set(names) <= set(offline.columns)
    row = entity_df.iloc[0]
    online = store.get_online_features(
        features=service,
        entity_rows=[
            {
                "customer_id": int(row.customer_id),
                "merchant_id": int(row.merchant_id),
                "amount": float(row.amount),
                "channel": row.channel,
                "transaction_unix": int(row.transaction_unix),
            }
        ],
    ).to_dict()
    assert set(names) <= set(online)
    # Activity is known exactly when the customer transacted before (no TTL: it never expires).
    offline = offline.set_index(["customer_id", "event_timestamp"]).loc[
        list(zip(entity_df["customer_id"], entity_df["event_timestamp"], strict=True))
    ]
    earlier = [
        ((everything["customer_id"] == c) & (everything["event_timestamp"] < t)).any()
        for c, t in zip(entity_df["customer_id"], entity_df["event_timestamp"], strict=True)
    ]
    assert offline["txn_count_24h"].notna().tolist() == earlier
