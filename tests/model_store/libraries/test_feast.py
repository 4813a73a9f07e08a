"""Feast's Redis format through ``model_store.libraries.feast``: byte for byte what Feast's own writer stores,
read back by Feast's own reader, for every value type a feature view can declare; and the version check."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import redis

from model_store.libraries import feast, versions
from tests.conftest import REDIS_URL, delete_project_keys, unique_project

VIEW = "account_stats"
NOW = pd.Timestamp("2026-05-01 12:00:00.123456", tz="UTC")


def accounts() -> pd.DataFrame:
    """Rows with a value of every type, missing values included (None, NaN, NaT), and edge values."""
    return pd.DataFrame(
        {
            "account_id": np.array([1, 2, 3, 4], dtype=np.int64),
            "event_timestamp": [NOW - pd.Timedelta(hours=h) for h in range(4)],
            "i32": np.array([1, -2, 3, 3], dtype=np.int32),
            "i64": np.array([2**40, 0, -5, 7], dtype=np.int64),
            "f32": np.array([0.5, np.nan, 1.25, 0.5], dtype=np.float32),
            "f64": [1.5, np.nan, -0.0, 1e300],
            "amount": [12.5, 0.1, 3.0, 1e-9],  # a double column without gaps (the fixed-width path)
            "s": ["north", None, "", "north"],
            "b": [True, False, None, True],
            "ts": [NOW, pd.NaT, NOW - pd.Timedelta(days=3), NOW],
            "ints": [[1, 2], [], None, [3]],
            "strings": [["a"], ["b", "c"], None, []],
            "raw": [b"x", b"", None, b"\x00\xff"],
        }
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A Feast store built in this process on the shared Redis, with a view of every type and a service."""
    from feast import Entity, FeatureService, FeatureStore, FeatureView, Field, FileSource, ValueType
    from feast.infra.online_stores.redis import RedisOnlineStoreConfig
    from feast.repo_config import RepoConfig
    from feast.types import Array, Bool, Bytes, Float32, Float64, Int32, Int64, String, UnixTimestamp

    home = tmp_path_factory.mktemp("feast_format")
    source = home / "accounts.parquet"
    accounts().iloc[:1][["account_id", "event_timestamp"]].to_parquet(source)
    host, port = REDIS_URL.removeprefix("redis://").split("/")[0].split(":")
    config = RepoConfig(
        project=unique_project("fmt"),
        registry=str(home / "registry.db"),
        provider="local",
        online_store=RedisOnlineStoreConfig(connection_string=f"{host}:{port},db=0"),
        entity_key_serialization_version=3,
        repo_path=str(home),
    )
    feature_store = FeatureStore(config=config)
    account = Entity(name="account", join_keys=["account_id"], value_type=ValueType.INT64)
    types = {
        "i32": Int32,
        "i64": Int64,
        "f32": Float32,
        "f64": Float64,
        "amount": Float64,
        "s": String,
        "b": Bool,
        "ts": UnixTimestamp,
        "ints": Array(Int64),
        "strings": Array(String),
        "raw": Bytes,
    }
    view = FeatureView(
        name=VIEW,
        entities=[account],
        ttl=timedelta(days=1),
        schema=[Field(name=name, dtype=dtype) for name, dtype in types.items()],
        source=FileSource(path=str(source), timestamp_field="event_timestamp"),
        online=True,
    )
    feature_store.apply([account, view, FeatureService(name="accounts_v1", features=[view])])
    yield feature_store
    delete_project_keys(config.project)


def stored_hashes(store: Any) -> dict[bytes, dict[bytes, bytes]]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        return {key: client.hgetall(key) for key in client.scan_iter(match=f"*{store.project}")}
    finally:
        client.close()


def clear(store: Any) -> None:
    delete_project_keys(store.project)


def value_types(store: Any) -> dict[str, Any]:
    view = store.get_feature_view(VIEW)
    return {f.name: f.dtype.to_value_type() for f in view.features}


def our_hashes(store: Any, frame: pd.DataFrame, per_value: bool) -> dict[bytes, dict[bytes, bytes]]:
    """The hashes our encoders make of ``frame``: column by column, or value by value (a stream processor)."""
    from feast import ValueType

    types = value_types(store)
    keys = feast.entity_redis_keys(frame, {"account_id": ValueType.INT64}, store.project, 3)
    stamps = feast.timestamp_bytes(frame["event_timestamp"])
    if per_value:
        columns = {name: [feast.value_bytes(v, t) for v in frame[name].tolist()] for name, t in types.items()}
    else:
        columns = {name: feast.column_value_bytes(frame[name], t) for name, t in types.items()}
    return {
        key: {
            feast.timestamp_field(VIEW): stamps[i],
            **{feast.feature_field(VIEW, name): columns[name][i] for name in types},
        }
        for i, key in enumerate(keys)
    }


def feast_answer(store: Any, ids: list[int]) -> dict[str, list[Any]]:
    service = store.get_feature_service("accounts_v1")
    return store.get_online_features(features=service, entity_rows={"account_id": ids}).to_dict()


@pytest.mark.parametrize("per_value", [False, True], ids=["by_column", "by_value"])
def test_our_encoding_is_byte_for_byte_what_feasts_writer_stores(store: Any, per_value: bool) -> None:
    frame = accounts()
    clear(store)
    store.write_to_online_store(VIEW, frame)
    theirs = stored_hashes(store)
    assert len(theirs) == len(frame)
    assert our_hashes(store, frame, per_value) == theirs


def test_feast_reads_back_what_we_write(store: Any) -> None:
    frame = accounts()
    ids = [*frame["account_id"].tolist(), 99]  # and an entity nobody wrote
    clear(store)
    store.write_to_online_store(VIEW, frame)
    expected = feast_answer(store, ids)
    clear(store)
    client = redis.Redis.from_url(REDIS_URL)
    for key, fields in our_hashes(store, frame, per_value=True).items():
        client.hset(key, mapping=fields)
    client.close()
    assert feast_answer(store, ids) == expected
    assert expected["s"] == ["north", None, "", "north", None]


def test_key_encoder_builds_the_key_feast_writes() -> None:
    from feast import ValueType
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    encode = feast.key_encoder("proj", ["customer_id", "region"], [ValueType.INT64, ValueType.STRING], 3)
    proto = EntityKey(
        join_keys=["customer_id", "region"], entity_values=[Value(int64_val=42), Value(string_val="north")]
    )
    expected = serialize_entity_key(proto, entity_key_serialization_version=3) + b"proj"
    assert encode([42, "north"]) == expected == feast.redis_key("proj", proto, 3)
    frame = pd.DataFrame({"customer_id": np.array([42], dtype=np.int64), "region": ["north"]})
    keys = feast.entity_redis_keys(
        frame, {"customer_id": ValueType.INT64, "region": ValueType.STRING}, "proj", 3
    )
    assert keys == [expected]


def test_read_plan_and_fields_are_feasts(store: Any) -> None:
    clear(store)
    store.write_to_online_store(VIEW, accounts().iloc[:1])
    (written,) = stored_hashes(store).values()

    context = feast.online_request_context(store, store.get_feature_service("accounts_v1"))
    ((view, requested),) = context.grouped_refs
    assert view.name == VIEW and context.entity_to_join_key["account"] == "account_id"
    assert not context.entityless and not context.on_demand_views
    features, fields = feast.hset_fields(view, requested, VIEW)
    assert sorted(features) == sorted(value_types(store))
    # In read order: the requested features' fields, then the view's timestamp.
    assert fields == (*(feast.feature_field(VIEW, f) for f in features), feast.timestamp_field(VIEW))
    assert set(fields) == set(written)
    assert sorted(feast.parse_feature_ref(r)[2] for r in context.feature_refs) == sorted(features)
    assert feast.parse_feature_ref(f"{VIEW}@v2:i32") == (VIEW, 2, "i32")


def test_redis_connection_is_feasts(store: Any) -> None:
    nodes, options = feast.parse_redis_connection_string("10.0.0.1:6380,db=2,ssl=true,password=secret")
    assert nodes == [{"host": "10.0.0.1", "port": "6380"}]
    assert options == {"db": 2, "ssl": True, "password": "secret"}
    client = feast.redis_client(store)
    assert client is feast.redis_client(store)  # Feast's own client and pool, created once
    assert client.ping()


def test_timestamps_round_trip_at_microsecond_precision() -> None:
    moments = pd.Series([NOW, pd.Timestamp("1970-01-01 00:00:00.000001")])  # naive is UTC
    raws = feast.timestamp_bytes(pd.to_datetime(moments, utc=True))
    assert feast.timestamp_bytes(pd.Series([pd.Timestamp("1970-01-01 00:00:00.000001")])) == raws[1:]
    micros = feast.timestamp_micros([*raws, None, b""])
    assert micros.tolist() == [NOW.value // 1_000, 1, feast.NEVER, feast.NEVER]


def test_another_feast_version_fails_loudly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    feast.require_version.cache_clear()
    monkeypatch.setattr(versions, "installed_version", lambda name: "0.68.0")
    calls = {
        "redis_key": lambda: feast.redis_key("p", None, 3),
        "key_encoder": lambda: feast.key_encoder("p", [], [], 3),
        "feature_field": lambda: feast.feature_field("v", "f"),
        "value_bytes": lambda: feast.value_bytes(1.0, None),
        "online_request_context": lambda: feast.online_request_context(None, None),
        "parse_redis_connection_string": lambda: feast.parse_redis_connection_string("h:1"),
        "redis_client": lambda: feast.redis_client(None),
    }
    try:
        for name, call in calls.items():
            with pytest.raises(
                versions.LibraryVersionError, match=r"feast 0\.67\.0, but feast 0\.68\.0"
            ) as error:
                call()
            assert "model_store/libraries/feast.py" in str(error.value), name
    finally:
        feast.require_version.cache_clear()


def test_the_stream_encoder_writes_the_timestamp_bytes_feast_writes() -> None:
    encoder = feast.ScalarEncoder()
    rng = np.random.default_rng(5)
    moments = [0, 1, 999_999, 1_000_000, 1_000_001, -1, -1_500_000, 2**62, *rng.integers(0, 2**53, 2_000)]
    for micros in moments:
        assert encoder.timestamp(int(micros)) == feast.timestamp_bytes_of(int(micros)), micros
