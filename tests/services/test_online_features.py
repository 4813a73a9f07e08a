"""The direct Redis reader gives exactly what Feast's get_online_features gives, in one round trip."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

import pytest
import redis

from model_store import libraries
from model_store.settings import Settings
from services.scorer.online_features import (
    OnlineStoreUnavailable,
    RedisFeatureReader,
    SdkFeatureReader,
    _column_decoder,
    open_feature_reader,
)
from tests.services.conftest import RedisServer, copy_entity_hashes, install_env, known_ids


def feast_answer(settings: Settings, rows: dict[str, list]) -> dict[str, list]:
    store = settings.feature_store()
    service = store.get_feature_service(settings.feature_service)
    return store.get_online_features(features=service, entity_rows=rows).to_dict()


def entity_key(settings: Settings, join_key: str, value: int) -> bytes:
    from feast.value_type import ValueType

    return libraries.feast.key_encoder(settings.feast_project, [join_key], [ValueType.INT64], 3)([value])


def field_of(view: str, feature: str) -> bytes:
    return libraries.feast.feature_field(view, feature)


def rows_for(customers: list[int], merchants: list[int], now: int) -> dict[str, list]:
    n = len(customers)
    return {
        "customer_id": customers,
        "merchant_id": merchants,
        "amount": [12.5 + 40 * i for i in range(n)],
        "channel": [("chip", "contactless", "online")[i % 3] for i in range(n)],
        "transaction_unix": [now - 60 * i for i in range(n)],
    }


@pytest.fixture
def partial_store(
    served_env: dict[str, str], private_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> tuple[Settings, dict[str, int]]:
    """A private Redis holding known entities plus deliberately incomplete ones (our own ids)."""
    shared = install_env(served_env, monkeypatch)
    customers, merchants = known_ids(shared)
    copy_entity_hashes(
        shared, private_redis.url, {"customer_id": customers[:20], "merchant_id": merchants[:10]}
    )
    settings = install_env(served_env, monkeypatch, redis_url=private_redis.url)
    client = redis.Redis.from_url(private_redis.url)
    ids = {"known_customer": customers[0], "known_merchant": merchants[0]}
    # A customer with one feature absent, one without a profile, a merchant with only its profile.
    one_gap, no_profile, profile_only = 900_000_001, 900_000_002, 900_000_003
    for new, source, drop in (
        (one_gap, customers[1], [field_of("customer_activity", "txn_count_1h")]),
        (
            no_profile,
            customers[2],
            [
                field_of("customer_profile", f)
                for f in ("home_region", "card_type", "credit_limit", "account_created_unix")
            ]
            + [b"_ts:customer_profile"],
        ),
    ):
        fields = client.hgetall(entity_key(settings, "customer_id", source))
        for name in drop:
            fields.pop(name)
        client.hset(entity_key(settings, "customer_id", new), mapping=fields)
    merchant = client.hgetall(entity_key(settings, "merchant_id", merchants[1]))
    kept = {
        k: v
        for k, v in merchant.items()
        if k
        in (
            field_of("merchant_profile", "merchant_category"),
            field_of("merchant_profile", "merchant_region"),
            b"_ts:merchant_profile",
        )
    }
    client.hset(entity_key(settings, "merchant_id", profile_only), mapping=kept)
    client.close()
    ids.update(one_gap=one_gap, no_profile=no_profile, profile_only=profile_only)
    return settings, ids


def test_column_decoders_agree_with_feasts_own_decoding_value_by_value() -> None:
    from feast.protos.feast.types.Value_pb2 import Value
    from feast.type_map import feast_value_type_to_python_type
    from feast.value_type import ValueType

    cases = {
        ValueType.DOUBLE: [Value(double_val=v) for v in (1.25, -0.0, 0.0, 1e300, float("nan"))],
        ValueType.FLOAT: [Value(float_val=v) for v in (0.1, 3.5)],
        ValueType.INT64: [Value(int64_val=v) for v in (0, 7, 7, -3, 2**40)],
        ValueType.STRING: [Value(string_val=v) for v in ("north", "", "north")],
        ValueType.BOOL: [Value(bool_val=v) for v in (True, False, True)],
    }
    for value_type, protos in cases.items():
        raws = [p.SerializeToString() for p in protos]
        decode = _column_decoder(value_type)
        # Short columns, and long ones (from BUFFER_MIN_VALUES on, doubles decode as one buffer).
        for column in (raws, [None, *raws, b"", *raws], [None, b""], [None, *raws] * 20, [b"", None] * 20):
            expected = [
                feast_value_type_to_python_type(Value.FromString(r), value_type) if r else None
                for r in column
            ]
            # repr: NaN is not equal to itself; -0.0 must stay -0.0
            assert repr(decode(column)) == repr(expected), value_type
    # A value in another layout (an integer left in a view whose type became a double) takes the general path.
    mixed = [Value(double_val=2.5).SerializeToString(), Value(int64_val=5).SerializeToString()]
    expected = [feast_value_type_to_python_type(Value.FromString(r), ValueType.DOUBLE) for r in mixed]
    assert _column_decoder(ValueType.DOUBLE)(mixed) == expected


def test_reader_matches_feast_for_known_unknown_and_partial_entities(
    partial_store: tuple[Settings, dict[str, int]],
) -> None:
    settings, ids = partial_store
    reader = open_feature_reader(settings, settings.feature_service)
    assert isinstance(reader, RedisFeatureReader)
    unknown = 123_456_789
    now = int(time.time())
    customers = [
        ids["known_customer"],
        ids["one_gap"],
        ids["no_profile"],
        unknown,
        ids["known_customer"],
        unknown,
    ]
    merchants = [
        ids["known_merchant"],
        ids["known_merchant"],
        ids["profile_only"],
        ids["known_merchant"],
        unknown,
        unknown,
    ]
    rows = rows_for(customers, merchants, now)

    got = asyncio.run(reader.read(rows, [float(t) for t in rows["transaction_unix"]]))
    expected = feast_answer(settings, rows)

    assert got.columns == expected
    assert got.missing[0] == []
    assert got.missing[1] == ["txn_count_1h"]
    assert {"home_region", "card_type", "credit_limit"} <= set(got.missing[2])
    assert "txn_count_24h" not in got.missing[2]
    assert "merchant_txn_count_1h" in got.missing[2] and "merchant_category" not in got.missing[2]
    assert got.unknown_entities == [[], [], [], ["customer"], ["merchant"], ["customer", "merchant"]]
    # The on-demand view's own defaults for a customer without history, straight from its UDF.
    assert got.columns["seconds_since_last_txn"][3] == -1.0
    assert got.columns["account_age_days"][2] == -1.0

    # The plain SDK reader says the same, flags included.
    sdk = SdkFeatureReader(reader.plan, settings.feature_store())
    plain = asyncio.run(sdk.read(rows, [float(t) for t in rows["transaction_unix"]]))
    assert (plain.columns, plain.missing, plain.stale, plain.unknown_entities) == (
        got.columns,
        got.missing,
        got.stale,
        got.unknown_entities,
    )


def test_reader_matches_feast_for_a_batch_with_repeats(served_settings: Settings) -> None:
    customers, merchants = known_ids(served_settings)
    now = int(time.time())
    n = 300
    rows = rows_for([customers[i % 50] for i in range(n)], [merchants[i % 7] for i in range(n)], now)
    reader = open_feature_reader(served_settings, served_settings.feature_service)
    got = asyncio.run(reader.read(rows, [float(t) for t in rows["transaction_unix"]]))
    assert got.columns == feast_answer(served_settings, rows)
    assert not any(got.unknown_entities)


def test_features_older_than_their_view_ttl_are_flagged_stale(served_settings: Settings) -> None:
    customers, merchants = known_ids(served_settings)
    rows = rows_for(customers[:1], merchants[:1], int(time.time()))
    reader = open_feature_reader(served_settings, served_settings.feature_service)
    fresh = asyncio.run(reader.read(rows, [time.time()]))
    assert fresh.stale == [[]]
    # Scored as if 8 days later: past the 2-day risk TTL; activity and profiles never expire.
    later = asyncio.run(reader.read(rows, [time.time() + 8 * 86400]))
    stale = set(later.stale[0])
    assert {"merchant_fraud_rate_30d", "merchant_labeled_txn_30d"} <= stale
    assert not stale & {
        "txn_count_1h",
        "amount_mean_7d",
        "merchant_txn_count_24h",
        "home_region",
        "card_type",
    }
    assert later.columns == fresh.columns  # Feast serves stale values as they are; the flag says so


def test_redis_down_is_unavailable_then_recovers_without_a_new_reader(
    served_env: dict[str, str], private_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = install_env(served_env, monkeypatch)
    customers, merchants = known_ids(shared)
    copy_entity_hashes(
        shared, private_redis.url, {"customer_id": customers[:1], "merchant_id": merchants[:1]}
    )
    settings = install_env(served_env, monkeypatch, redis_url=private_redis.url)
    reader = open_feature_reader(settings, settings.feature_service)
    rows = rows_for(customers[:1], merchants[:1], int(time.time()))

    async def scenario() -> None:
        before = await reader.read(rows, [time.time()])
        assert before.unknown_entities == [[]]
        private_redis.stop()
        assert not await reader.ping()
        with pytest.raises(OnlineStoreUnavailable, match="did not answer"):
            await reader.read(rows, [time.time()])
        private_redis.start()  # empty again: Redis keeps nothing on disk here
        copy_entity_hashes(
            shared, private_redis.url, {"customer_id": customers[:1], "merchant_id": merchants[:1]}
        )
        assert await reader.ping()
        after = await reader.read(rows, [time.time()])
        assert after.columns == before.columns
        # Restarted between two reads: the pooled connection is dead, the read reconnects by itself.
        private_redis.stop()
        private_redis.start()
        copy_entity_hashes(
            shared, private_redis.url, {"customer_id": customers[:1], "merchant_id": merchants[:1]}
        )
        again = await reader.read(rows, [time.time()])
        assert again.columns == before.columns
        await reader.close()

    asyncio.run(scenario())


def test_sqlite_fallback_reads_through_feast_and_agrees_with_redis(
    served_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import pandas as pd
    from feast.infra.online_stores.sqlite import SqliteOnlineStore

    shared = install_env(served_env, monkeypatch)
    customers, merchants = known_ids(shared)
    redis_store = shared.feature_store()
    redis_reader = open_feature_reader(shared, shared.feature_service)
    settings = install_env(served_env, monkeypatch, online_store="sqlite")
    Path(settings.feast_env()["FEAST_SQLITE_PATH"]).parent.mkdir(parents=True, exist_ok=True)
    store = settings.feature_store()
    SqliteOnlineStore().update(
        config=store.config,
        tables_to_delete=[],
        tables_to_keep=store.list_feature_views(),
        entities_to_delete=[],
        entities_to_keep=store.list_entities(),
        partial=True,
    )
    # The same feature values, written into SQLite through Feast.
    for view in store.list_feature_views():
        key = view.entity_columns[0].name
        ids = customers[:3] if key == "customer_id" else merchants[:3]
        frame = redis_store.get_online_features(
            features=[f"{view.name}:{f.name}" for f in view.features], entity_rows=[{key: i} for i in ids]
        ).to_df()
        frame["event_timestamp"] = pd.Timestamp.now(tz="UTC")
        store.write_to_online_store(view.name, frame)

    reader = open_feature_reader(settings, settings.feature_service)
    assert isinstance(reader, SdkFeatureReader)
    rows = rows_for([*customers[:3], 123_456_789], [*merchants[:3], merchants[0]], int(time.time()))
    times = [float(t) for t in rows["transaction_unix"]]
    got = asyncio.run(reader.read(rows, times))
    via_redis = asyncio.run(redis_reader.read(rows, times))
    assert got.columns == via_redis.columns
    assert got.unknown_entities == via_redis.unknown_entities == [[], [], [], ["customer"]]
    assert got.columns["log_amount"] == [math.log1p(a) for a in rows["amount"]]
