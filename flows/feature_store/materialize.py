"""Materialization of new feature rows into the online store, fast on Redis, through Feast's own format.

Feast's ``materialize`` converts every value from Arrow to protobuf and hashes every field name per value
(figures: docs/architecture.md, "Why it is built this way"). This writer keeps Feast's layout exactly (its
entity-key serialization, its murmur3 field names, its ``ValueProto`` values and ``_ts`` timestamps, all
through Feast's functions, reached through ``model_store.libraries.feast``) but converts each column once per
distinct value, hashes each field name once per view, and pipelines the writes (packed by hiredis, replies
read off the connection). Other online stores go through ``FeatureStore.write_to_online_store``. Either way
the run is recorded in Feast's registry as a materialization interval, as ``feast materialize`` does.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

import hiredis
import numpy as np
import pandas as pd
import redis
from feast import FeatureStore, FeatureView

from model_store import libraries

log = logging.getLogger(__name__)

PIPELINE_ROWS = 5_000


@dataclass(frozen=True)
class MaterializedView:
    feature_view: str
    rows_in: int
    entities_written: int
    seconds: float


def latest_per_entity(frame: pd.DataFrame, join_keys: list[str], timestamp_field: str) -> pd.DataFrame:
    """The newest row of each entity: what the online store holds after a run.

    Only the keys are reordered, never the whole frame: a run's merchant risk is tens of millions of rows.
    """
    # As datetime64, not the Timestamp objects ``to_numpy()`` makes of a tz-aware column (minutes at 45 M rows).
    order = np.argsort(frame[timestamp_field].to_numpy("datetime64[ns]"), kind="stable")
    newest = ~frame[join_keys].iloc[order].duplicated(keep="last").to_numpy()
    return frame.iloc[order[newest]].reset_index(drop=True)


def materialize_frames(
    store: FeatureStore, frames: dict[str, pd.DataFrame], end: datetime
) -> list[MaterializedView]:
    """Write each view's newest rows per entity into the online store and record the interval in the registry."""
    results = []
    for name, frame in frames.items():
        if frame.empty:
            continue
        fv = store.get_feature_view(name, allow_registry_cache=False)
        started = pd.Timestamp.now()
        join_keys = {column.name: column.dtype.to_value_type() for column in fv.entity_columns}
        latest = latest_per_entity(frame, list(join_keys), fv.batch_source.timestamp_field)
        if store.config.online_store.type == "redis":
            written = _write_redis(store, fv, latest, join_keys)
        else:
            store.write_to_online_store(name, latest)
            written = len(latest)
        start = frame[fv.batch_source.timestamp_field].min().to_pydatetime()
        store.registry.apply_materialization(fv, store.project, start, end, commit=True)
        seconds = (pd.Timestamp.now() - started).total_seconds()
        results.append(MaterializedView(name, len(frame), written, seconds))
        log.info("materialized %s: %d entities from %d rows in %.2fs", name, written, len(frame), seconds)
    return results


def _write_redis(store: FeatureStore, fv: FeatureView, latest: pd.DataFrame, join_keys: dict) -> int:
    config = store.config
    features = [(f.name, f.dtype.to_value_type()) for f in fv.features]
    values = {
        name: libraries.feast.column_value_bytes(latest[name], value_type) for name, value_type in features
    }
    field_names = [libraries.feast.feature_field(fv.name, name) for name, _ in features]
    ts_field = libraries.feast.timestamp_field(fv.name)

    redis_keys = libraries.feast.entity_redis_keys(
        latest, join_keys, config.project, config.entity_key_serialization_version
    )
    timestamps = libraries.feast.timestamp_bytes(latest[fv.batch_source.timestamp_field])
    client = libraries.feast.redis_client(store)
    newer = _newer_than_stored(client, fv, redis_keys, ts_field, latest[fv.batch_source.timestamp_field])

    ttl = config.online_store.key_ttl_seconds
    columns = [values[name] for name, _ in features]
    rows = np.flatnonzero(newer)

    def commands() -> Iterator[tuple]:
        for i in rows:
            fields = [ts_field, timestamps[i]]
            for field_name, column in zip(field_names, columns, strict=True):
                fields += (field_name, column[i])
            yield ("HSET", redis_keys[i], *fields)
            if ttl:
                yield ("EXPIRE", redis_keys[i], ttl)

    _send_pipelined(client, commands())
    return len(rows)


def _send_pipelined(client, commands: Iterable[tuple]) -> None:
    """Send commands in pipelined chunks on one of the client's pooled connections, checking every reply.

    hiredis packs each command; replies are read straight off the connection. redis-py's pipeline object
    adds per-command bookkeeping and response callbacks that slow the write by a third.
    """
    if not isinstance(client, redis.Redis):
        # Redis Cluster: its pipeline routes each command to the node that owns the key's slot.
        with client.pipeline(transaction=False) as pipe:
            for sent, command in enumerate(commands, start=1):
                pipe.execute_command(*command)
                if sent % PIPELINE_ROWS == 0:
                    pipe.execute()
            pipe.execute()
        return
    pool = client.connection_pool
    connection = pool.get_connection()
    try:
        chunk: list[bytes] = []
        for command in commands:
            chunk.append(hiredis.pack_command(command))
            if len(chunk) == PIPELINE_ROWS:
                _send_chunk(connection, chunk)
                chunk = []
        if chunk:
            _send_chunk(connection, chunk)
    except BaseException:
        connection.disconnect()  # replies may be left unread: the pool must not reuse it in that state
        raise
    finally:
        pool.release(connection)


def _send_chunk(connection, packed: list[bytes]) -> None:
    connection.send_packed_command(packed)
    for _ in packed:
        connection.read_response()  # raises Redis's error (wrong type, OOM) for a failed command


def _newer_than_stored(
    client, fv: FeatureView, keys: list[bytes], ts_field: bytes, ts: pd.Series
) -> np.ndarray:
    """Which rows are newer than what Redis holds, so late-arriving data never overwrites fresher values.

    The read is skipped, like Feast's ``skip_dedup`` (one round trip instead of two), on a view's first
    materialization and when the whole batch is newer than its last materialized end (append-only runs).
    """
    end = fv.most_recent_end_time
    if end is None or ts.min() > pd.Timestamp(end):
        return np.ones(len(keys), dtype=bool)
    stored: list[bytes | None] = []
    with client.pipeline(transaction=False) as pipe:
        for start in range(0, len(keys), PIPELINE_ROWS):
            for key in keys[start : start + PIPELINE_ROWS]:
                pipe.hget(key, ts_field)
            stored.extend(pipe.execute())
    new_micros = pd.DatetimeIndex(ts).tz_convert("UTC").as_unit("us").asi8
    return new_micros > libraries.feast.timestamp_micros(stored)
