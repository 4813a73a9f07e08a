"""The fast Redis writer leaves exactly the bytes Feast's own writer leaves, and never overwrites fresher rows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis

from flows.feature_store.materialize import (
    PIPELINE_ROWS,
    _send_pipelined,
    latest_per_entity,
    materialize_frames,
)
from model_store.settings import Settings
from tests.services.conftest import RedisServer

NOW = pd.Timestamp("2026-06-01 12:00", tz="UTC")


def _apply(settings: Settings) -> None:
    feast = Path(sys.executable).with_name("feast")
    cmd = [str(feast), "-c", str(settings.feast_repo_path), "-f", str(settings.feast_yaml), "apply"]
    subprocess.run(cmd, check=True, capture_output=True)


def _activity(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "customer_id": rng.integers(1, n // 2, n).astype(np.int64),
            "event_timestamp": (NOW - pd.to_timedelta(rng.integers(0, 86_400, n), unit="s")).astype(
                "datetime64[us, UTC]"
            ),
            **{f"txn_count_{w}": rng.integers(1, 9, n).astype(np.int64) for w in ("1h", "24h", "7d")},
            **{f"amount_sum_{w}": np.round(rng.lognormal(3, 1, n), 2) for w in ("1h", "24h", "7d")},
            **{f"amount_mean_{w}": np.round(rng.lognormal(3, 1, n), 4) for w in ("1h", "24h", "7d")},
            "distinct_merchants_24h": rng.integers(1, 5, n).astype(np.int64),
            "seconds_since_prev_txn": rng.uniform(0, 1e5, n),
            "last_txn_unix": rng.integers(1.7e9, 1.8e9, n).astype(np.int64),
        }
    )
    # Missing values must come out as Feast writes them (an empty ValueProto).
    frame.loc[frame.index[:5], "amount_mean_7d"] = np.nan
    return frame


def _profile() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": np.arange(1, 41, dtype=np.int64),
            "event_timestamp": pd.Series([NOW - pd.Timedelta(days=400)] * 40).astype("datetime64[us, UTC]"),
            "home_region": ["north", "south", None, "east"] * 10,
            "card_type": ["credit", "debit"] * 20,
            "credit_limit": np.linspace(500, 5000, 40),
            "account_created_unix": np.full(40, 1_700_000_000, dtype=np.int64),
        }
    )


def _snapshot(client: redis.Redis, project: str) -> dict[bytes, dict[bytes, bytes]]:
    return {
        key.removesuffix(project.encode()): client.hgetall(key)
        for key in client.scan_iter(match=f"*{project}", count=1000)
    }


@pytest.fixture
def applied(settings: Settings) -> Settings:
    _apply(settings)
    return settings


def test_fast_writer_is_byte_identical_to_feast(applied: Settings) -> None:
    store = applied.feature_store()
    client = redis.Redis.from_url(applied.redis_url)
    frames = {"customer_activity": _activity(400, seed=1), "customer_profile": _profile()}

    materialize_frames(store, frames, end=NOW.to_pydatetime())
    ours = _snapshot(client, applied.feast_project)
    for key in client.scan_iter(match=f"*{applied.feast_project}", count=1000):
        client.delete(key)
    for name, frame in frames.items():
        keys = ["customer_id"]
        store.write_to_online_store(name, latest_per_entity(frame, keys, "event_timestamp"))
    theirs = _snapshot(client, applied.feast_project)

    assert len(ours) == len(theirs) > 0
    assert ours == theirs


def test_late_rows_never_overwrite_fresher_values(applied: Settings) -> None:
    store = applied.feature_store()
    fresh = _activity(50, seed=2)
    materialize_frames(store, {"customer_activity": fresh}, end=NOW.to_pydatetime())
    client = redis.Redis.from_url(applied.redis_url)
    before = _snapshot(client, applied.feast_project)

    late = fresh.copy()
    late["event_timestamp"] = late["event_timestamp"] - pd.Timedelta(days=3)
    late["txn_count_1h"] = 99
    results = materialize_frames(store, {"customer_activity": late}, end=NOW.to_pydatetime())

    assert results[0].entities_written == 0
    assert _snapshot(client, applied.feast_project) == before
    newer = fresh.copy()
    newer["event_timestamp"] = newer["event_timestamp"] + pd.Timedelta(days=1)
    results = materialize_frames(
        store, {"customer_activity": newer}, end=(NOW + pd.Timedelta(days=2)).to_pydatetime()
    )
    assert results[0].entities_written == newer["customer_id"].nunique()


def test_a_failed_write_raises_redis_error_and_the_next_write_succeeds(applied: Settings) -> None:
    store = applied.feature_store()
    client = redis.Redis.from_url(applied.redis_url)
    materialize_frames(store, {"customer_profile": _profile()}, end=NOW.to_pydatetime())
    (key, *_) = _snapshot(client, applied.feast_project)
    full_key = key + applied.feast_project.encode()
    client.delete(full_key)
    client.set(full_key, b"not a hash")  # HSET on it fails with WRONGTYPE mid-pipeline

    # Newer than the last materialized end, so the stored-timestamp read is skipped and the write itself fails.
    later = _profile()
    later["event_timestamp"] = NOW + pd.Timedelta(hours=1)
    end = (NOW + pd.Timedelta(hours=1)).to_pydatetime()
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        materialize_frames(store, {"customer_profile": later}, end=end)
    assert client.ping()

    client.delete(full_key)
    results = materialize_frames(store, {"customer_profile": later}, end=end)
    assert results[0].entities_written == 40
    snapshot = _snapshot(client, applied.feast_project)
    assert len(snapshot) == 40
    assert len({fields[b"_ts:customer_profile"] for fields in snapshot.values()}) == 1


@pytest.mark.parametrize("cluster", [False, True], ids=["standalone", "cluster"])
def test_pipelined_writes_reach_standalone_and_cluster_redis(tmp_path: Path, cluster: bool) -> None:
    server = RedisServer(tmp_path, cluster=cluster)
    server.start()
    try:
        client = (
            redis.RedisCluster(host="127.0.0.1", port=server.port)
            if cluster
            else redis.Redis(port=server.port)
        )
        n = PIPELINE_ROWS + 7  # more than one chunk
        _send_pipelined(client, (("HSET", f"entity:{i}", "f", i) for i in range(n)))
        assert client.dbsize() == n
        assert client.hget(f"entity:{n - 1}", "f") == str(n - 1).encode()
        client.close()
    finally:
        server.stop()
