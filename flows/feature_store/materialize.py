"""Materialization of new feature rows into the online store, fast on Redis, through Feast's own format.

Feast's ``materialize`` converts every value from Arrow to protobuf and hashes every field name per value
(8-14k rows/s here). This writer keeps Feast's layout exactly (its entity-key serialization, its murmur3
field names, its ``ValueProto`` values and ``_ts`` timestamps, all through Feast's functions) but converts
each column once per distinct value, hashes each field name once per view, and pipelines the writes
(packed by hiredis, replies read off the connection). Other online stores go through
``FeatureStore.write_to_online_store``. Either way the run is recorded in Feast's registry as a
materialization interval, as ``feast materialize`` does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

import hiredis
import numpy as np
import pandas as pd
import pyarrow as pa
import redis
from feast import FeatureStore, FeatureView, ValueType
from feast.infra.online_stores.helpers import _mmh3, _redis_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.type_map import PYTHON_SCALAR_VALUE_TYPE_TO_PROTO_VALUE
from feast.utils import _build_entity_keys, _columns_to_proto_values
from google.protobuf.timestamp_pb2 import Timestamp

log = logging.getLogger(__name__)

PIPELINE_ROWS = 5_000


@dataclass(frozen=True)
class MaterializedView:
    feature_view: str
    rows_in: int
    entities_written: int
    seconds: float


def latest_per_entity(frame: pd.DataFrame, join_keys: list[str], timestamp_field: str) -> pd.DataFrame:
    """The newest row of each entity: what the online store holds after a run."""
    ordered = frame.sort_values(timestamp_field, kind="stable")
    return ordered.drop_duplicates(subset=join_keys, keep="last").reset_index(drop=True)


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


def _proto_bytes_per_column(
    frame: pd.DataFrame, columns: list[tuple[str, ValueType]]
) -> dict[str, np.ndarray]:
    """Feast's ``ValueProto`` bytes for every cell of each column.

    Doubles are fixed width: their layout is learned from Feast's serializer once per column and applied
    to the whole column. Other scalars serialize each distinct value once, with Feast's own mapping from
    value type to proto field; anything else goes through Feast's column converter. A missing value is
    Feast's empty ``ValueProto``, which serializes to b"".
    """
    out: dict[str, np.ndarray] = {}
    for name, value_type in columns:
        column = frame[name]
        if value_type == ValueType.DOUBLE and column.notna().all():
            packed = _fixed_width(
                column.to_numpy(np.float64), lambda v: ValueProto(double_val=v).SerializeToString(), "<f8"
            )
            if packed is not None:
                out[name] = packed
                continue
        codes, uniques = pd.factorize(column, use_na_sentinel=True)
        if value_type in PYTHON_SCALAR_VALUE_TYPE_TO_PROTO_VALUE:
            field_name, convert, _ = PYTHON_SCALAR_VALUE_TYPE_TO_PROTO_VALUE[value_type]
            serialized = [
                ValueProto(**{field_name: convert(v)}).SerializeToString() for v in uniques.tolist()
            ]
        else:
            table = pa.RecordBatch.from_pydict({name: pa.array(list(uniques), from_pandas=True)})
            serialized = [
                p.SerializeToString() for p in _columns_to_proto_values(table, [(name, value_type)])[name]
            ]
        lookup = np.array([*serialized, b""], dtype=object)
        out[name] = lookup[np.where(codes < 0, len(serialized), codes)]
    return out


def _fixed_width(values: np.ndarray, feast_bytes: Callable[[object], bytes], dtype: str) -> np.ndarray | None:
    """Apply a fixed-width encoding learned from one call of Feast's serializer to a whole column.

    ``feast_bytes(v)`` is Feast's encoding of ``v``; around the packed value it is constant. Sample cells
    are checked against Feast itself and ``None`` (use the per-value path) is returned if they ever differ,
    so a change of Feast's format cannot corrupt the store.
    """
    if len(values) == 0:
        return np.array([], dtype=object)
    whole = feast_bytes(values[0])
    packed = np.array(values[:1], dtype=dtype).tobytes()
    at = whole.rfind(packed)
    if at < 0:
        return None
    head, tail, width = whole[:at], whole[at + len(packed) :], len(packed)
    raw = values.astype(dtype).tobytes()
    cells = np.array([head + raw[i : i + width] + tail for i in range(0, len(raw), width)], dtype=object)
    if any(cells[i] != feast_bytes(values[i]) for i in {0, len(values) // 2, len(values) - 1}):
        return None
    return cells


def _entity_redis_keys(
    store: FeatureStore, frame: pd.DataFrame, join_keys: dict[str, ValueType]
) -> list[bytes]:
    """Feast's Redis keys (entity-key serialization plus the project name) for each row."""
    project, version = store.config.project, store.config.entity_key_serialization_version
    if len(join_keys) == 1 and next(iter(join_keys.values())) == ValueType.INT64:
        (name,) = join_keys

        def feast_key(v: object) -> bytes:
            key = EntityKeyProto(join_keys=[name], entity_values=[ValueProto(int64_val=int(v))])
            return _redis_key(project, key, entity_key_serialization_version=version)

        keys = _fixed_width(frame[name].to_numpy(np.int64), feast_key, "<i8")
        if keys is not None:
            return list(keys)
    protos = _columns_to_proto_values(
        pa.RecordBatch.from_pandas(frame[list(join_keys)], preserve_index=False), list(join_keys.items())
    )
    return [
        _redis_key(project, key, entity_key_serialization_version=version)
        for key in _build_entity_keys(len(frame), join_keys, protos)
    ]


def _write_redis(store: FeatureStore, fv: FeatureView, latest: pd.DataFrame, join_keys: dict) -> int:
    config = store.config
    features = [(f.name, f.dtype.to_value_type()) for f in fv.features]
    values = _proto_bytes_per_column(latest, features)
    field_names = [_mmh3(f"{fv.name}:{name}") for name, _ in features]
    ts_field = f"_ts:{fv.name}".encode()

    redis_keys = _entity_redis_keys(store, latest, join_keys)
    timestamps = _timestamp_bytes(latest[fv.batch_source.timestamp_field])
    client = _redis_client(store)
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
    adds per-command bookkeeping and response callbacks that cost a third of the write (35k rows/s through
    it against 51k this way, measured here for 113k 13-field hashes).
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


def _timestamp_bytes(ts: pd.Series) -> list[bytes]:
    micros = pd.DatetimeIndex(ts).tz_convert("UTC").as_unit("us").asi8
    seconds, remainder = np.divmod(micros, 1_000_000)
    return [
        Timestamp(seconds=int(s), nanos=int(r) * 1_000).SerializeToString()
        for s, r in zip(seconds, remainder, strict=True)
    ]


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
    old_micros = np.array([_parse_timestamp_micros(raw) for raw in stored], dtype=np.int64)
    return new_micros > old_micros


def _parse_timestamp_micros(raw: bytes | None) -> int:
    if not raw:
        return np.iinfo(np.int64).min
    ts = Timestamp()
    ts.ParseFromString(raw)
    return ts.seconds * 1_000_000 + ts.nanos // 1_000


def _redis_client(store: FeatureStore):
    """Feast's own Redis client for this store (same connection string parsing, same pool)."""
    return store._get_provider().online_store._get_client(store.config.online_store)
