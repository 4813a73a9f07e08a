"""Online features of a request, exactly as Feast's ``get_online_features`` returns them, in one Redis round trip.

Feast's SDK path spends many times the Redis round trip in Python per call (request and response protobufs,
registry lookups, ``to_dict``; figures: docs/architecture.md, "Why it is built this way").
``RedisFeatureReader`` keeps Feast's semantics and format and drops the glue: the read plan (which views,
which features, which on-demand views) is resolved once by Feast's own planner; keys, field names and values
go through Feast's own functions (its key serialization and the Redis store's field names, reached through
``model_store.libraries.feast``, then ``ValueProto`` and ``feast_value_type_to_python_type``); both entities
are read with one pipelined ``HMGET`` each; the on-demand view's own transformation runs on the result.
``SdkFeatureReader`` is the plain path, used for the SQLite fallback and anything the fast path does not
cover. A parity test holds both to ``FeatureStore.get_online_features(features=feature_service, ...)``.

What a reader adds to Feast's answer: per row, the features that came back null (``missing``), the ones older
than their view's TTL at the event time (``stale``) and the entities the store has never seen
(``unknown_entities``). Defaults for nulls are the model's business (``services/scorer/model.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol

from model_store import libraries
from services.packed_commands import send

if TYPE_CHECKING:
    from feast import FeatureStore, FeatureView, OnDemandFeatureView
    from feast.value_type import ValueType
    from redis.asyncio import Redis

    from model_store.settings import Settings

logger = logging.getLogger(__name__)

# An entity's Redis read command is a pure function of its key values; caching it turns hot customers and
# merchants into a dict lookup. Bounded so memory cannot grow.
CACHE_LIMIT = 200_000
REDIS_TIMEOUT_SECONDS = 1.0
REDIS_CONNECT_TIMEOUT_SECONDS = 0.5


class OnlineStoreUnavailable(RuntimeError):
    """The online store did not answer: callers turn this into a 503, never a 500."""


@dataclass
class OnlineFeatures:
    """Feature columns of a request plus, per row, what was missing, stale or unknown."""

    columns: dict[str, list[Any]]
    missing: list[list[str]]
    stale: list[list[str]]
    unknown_entities: list[list[str]]


class FeatureReader(Protocol):
    """Reads a feature service's features for rows of entity keys and request fields."""

    plan: FeaturePlan

    async def read(
        self, rows: Mapping[str, Sequence[Any]], event_times: Sequence[float]
    ) -> OnlineFeatures: ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class ViewPlan:
    """One feature view's share of a read: its features in read order, their types and its TTL."""

    name: str
    stored_name: str
    features: tuple[str, ...]
    value_types: tuple[ValueType, ...]
    ttl_seconds: float


@dataclass(frozen=True)
class EntityPlan:
    """The views keyed by the same entity: they share one Redis hash, so one HMGET reads them all."""

    name: str
    join_keys: tuple[str, ...]
    key_types: tuple[ValueType, ...]
    views: tuple[ViewPlan, ...]
    fields: tuple[bytes, ...]


@dataclass
class FeaturePlan:
    """What a feature service reads, resolved once from the Feast registry by Feast's own planner."""

    feature_service: str
    project: str
    entities: tuple[EntityPlan, ...]
    on_demand_views: tuple[OnDemandFeatureView, ...]
    request_fields: frozenset[str]
    output_names: tuple[str, ...]
    join_keys: tuple[str, ...]
    view_of: dict[str, str] = field(default_factory=dict)
    entity_of_view: dict[str, str] = field(default_factory=dict)
    fast_path_blocker: str | None = None

    @cached_property
    def features_of_view(self) -> dict[str, list[str]]:
        """The service's output features of each view, in output order (on-demand ones under their view)."""
        grouped: dict[str, list[str]] = {}
        for name in self.output_names:
            grouped.setdefault(self.view_of.get(name, ""), []).append(name)
        return grouped

    @cached_property
    def presence_views(self) -> dict[str, list[ViewPlan]]:
        """Per entity, the views whose times tell whether the store has seen it: those with features the
        service returns (the SDK reports times only for those), else all of its views."""
        return {
            entity.name: [v for v in entity.views if self.features_of_view.get(v.name)] or list(entity.views)
            for entity in self.entities
        }


def plan_feature_read(store: FeatureStore, feature_service_name: str) -> FeaturePlan:
    """Resolve the feature service into entities, views, on-demand views and the output columns."""
    from feast.infra.online_stores.helpers import compute_versioned_name

    service = store.get_feature_service(feature_service_name, allow_cache=True)
    context = libraries.feast.online_request_context(store, service)
    entity_to_join_key, entity_types = context.entity_to_join_key, context.entity_types

    versioning = bool(getattr(store.config.registry, "enable_online_feature_view_versioning", False))
    blockers: list[str] = []
    if context.entityless:
        blockers.append("a feature view without entities")
    by_entity: dict[tuple[str, ...], list[ViewPlan]] = {}
    fields_by_entity: dict[tuple[str, ...], list[bytes]] = {}
    entity_names: dict[tuple[str, ...], str] = {}
    view_of: dict[str, str] = {}
    entity_of_view: dict[str, str] = {}
    for view, requested in context.grouped_refs:
        if view.projection.join_key_map:
            blockers.append(f"join-key aliases on {view.name}")
        stored_name = compute_versioned_name(view, versioning)
        # Feast's own field layout: a murmur3 field per "<view>:<feature>", then "_ts:<view>".
        features, hset_keys = libraries.feast.hset_fields(view, requested, stored_name)
        types_by_name = {f.name: f.dtype.to_value_type() for f in view.features}
        join_keys = tuple(entity_to_join_key[e] for e in view.entities)
        name = view.projection.name_to_use()
        by_entity.setdefault(join_keys, []).append(
            ViewPlan(
                name=name,
                stored_name=stored_name,
                features=features,
                value_types=tuple(types_by_name[f] for f in features),
                ttl_seconds=_ttl_seconds(view),
            )
        )
        fields_by_entity.setdefault(join_keys, []).extend(hset_keys)
        entity_names[join_keys] = "+".join(view.entities)
        entity_of_view[name] = entity_names[join_keys]
        for feature in features:
            view_of.setdefault(feature, name)
    for odfv in context.on_demand_views:
        if odfv.mode != "python" or odfv.write_to_online_store or odfv.aggregations:
            blockers.append(f"on-demand view {odfv.name} in {odfv.mode} mode")
        for f in odfv.features:
            view_of.setdefault(f.name, odfv.name)

    entities = tuple(
        EntityPlan(
            name=entity_names[join_keys],
            join_keys=join_keys,
            key_types=tuple(entity_types[k] for k in join_keys),
            views=tuple(views),
            fields=tuple(fields_by_entity[join_keys]),
        )
        for join_keys, views in by_entity.items()
    )
    output_names = tuple(libraries.feast.parse_feature_ref(ref)[2] for ref in context.feature_refs)
    all_join_keys = tuple(dict.fromkeys(k for e in entities for k in e.join_keys))
    return FeaturePlan(
        feature_service=feature_service_name,
        project=store.project,
        entities=entities,
        on_demand_views=tuple(context.on_demand_views),
        request_fields=frozenset(context.request_fields),
        output_names=tuple(dict.fromkeys(output_names)),
        join_keys=all_join_keys,
        view_of=view_of,
        entity_of_view=entity_of_view,
        fast_path_blocker="; ".join(blockers) or None,
    )


def _ttl_seconds(view: FeatureView) -> float:
    return view.ttl.total_seconds() if view.ttl else 0.0


# Value fields whose Python value Feast's feast_value_type_to_python_type returns unchanged; any other field
# (lists, maps, timestamps, UUIDs) goes through that function itself.
PLAIN_FIELDS = frozenset(
    {"int32_val", "int64_val", "double_val", "float_val", "string_val", "bool_val", "bytes_val"}
)


def _value_decoder(value_type: ValueType) -> Callable[[bytes], Any]:
    """Bytes of a stored ``ValueProto`` to the Python value ``get_online_features`` gives (never empty bytes)."""
    from feast.protos.feast.types.Value_pb2 import Value
    from feast.type_map import feast_value_type_to_python_type

    from_string = Value.FromString

    def decode(raw: bytes) -> Any:
        value = from_string(raw)
        field = value.WhichOneof("val")
        if field in PLAIN_FIELDS:
            return getattr(value, field)
        return feast_value_type_to_python_type(value, value_type)

    return decode


# Fixed-width scalar types: each stored value is one tag byte and the little-endian number, so a column of them
# decodes as one numpy buffer, and a single value with ``struct`` (a fifth of parsing its protobuf). The layout
# is taken from Feast's own encoder and checked against its decoder.
FIXED_WIDTH = {"DOUBLE": ("<f8", "<d"), "FLOAT": ("<f4", "<f")}  # numpy's and struct's name of the number
# Below this many values numpy's fixed cost per column exceeds parsing them one by one.
BUFFER_MIN_VALUES = 32
MEMO_LIMIT = 20_000


def _column_decoder(value_type: ValueType) -> Callable[[Sequence[bytes | None]], list[Any]]:
    """Stored values of one feature (None or empty where absent) to the column ``get_online_features`` gives.

    Parsing a ``ValueProto`` per value is the largest share of a batch read. Doubles and floats decode as one
    numpy buffer; other types keep a bounded memo of decoded values, which serves counts, categories and flags
    (few distinct values) from a dict.
    """
    import numpy as np
    from feast.type_map import python_values_to_proto_values

    decode = _value_decoder(value_type)
    dtype, number_format = FIXED_WIDTH.get(value_type.name, (None, ""))
    if dtype is not None:
        sample = python_values_to_proto_values([1.5], value_type)[0].SerializeToString()
        width = np.dtype(dtype).itemsize
        head, tail = sample[:-width], sample[-width:]
        number = struct.Struct(number_format)
        if (
            decode(sample) != 1.5
            or np.frombuffer(tail, dtype=dtype)[0] != 1.5
            or len(head) != 1
            or number.unpack(tail)[0] != 1.5
        ):
            dtype = None  # Feast's layout is not what this shortcut assumes: decode value by value
    memo: dict[bytes, Any] = {}

    def by_value(raws: Sequence[bytes | None]) -> list[Any]:
        if len(memo) > MEMO_LIMIT:
            memo.clear()
        out = []
        for raw in raws:
            if not raw:
                out.append(None)
                continue
            value = memo.get(raw)
            if value is None:
                value = memo[raw] = decode(raw)
            out.append(value)
        return out

    if dtype is None:
        return by_value
    size = 1 + width
    tag = head[0]
    unpack_from = number.unpack_from

    def one(raw: bytes) -> Any:
        if len(raw) == size and raw[0] == tag:
            return unpack_from(raw, 1)[0]
        return decode(raw)  # a value in another layout: its protobuf

    def by_buffer(raws: Sequence[bytes | None]) -> list[Any]:
        if len(raws) < BUFFER_MIN_VALUES:
            # Doubles rarely repeat: a memo would only fill up. Decode them one by one.
            return [one(raw) if raw else None for raw in raws]
        present = [raw for raw in raws if raw]
        if any(len(raw) != size for raw in present):
            return by_value(raws)  # a value in another layout: the general path
        cells = np.frombuffer(b"".join(present), dtype=np.uint8).reshape(-1, size)
        if not (cells[:, 0] == head[0]).all():
            return by_value(raws)
        decoded = np.ascontiguousarray(cells[:, 1:]).view(dtype).ravel().tolist()
        if len(present) == len(raws):
            return decoded
        values = iter(decoded)
        return [next(values) if raw else None for raw in raws]

    return by_buffer


def _column_caster(value_type: ValueType) -> Callable[[Sequence[Any]], list[Any]]:
    """What a UDF's output column becomes after Feast's proto round trip (``python_values_to_proto_values`` then
    ``feast_value_type_to_python_type``): without the round trip for scalar types, through it for others."""
    from feast.type_map import PYTHON_SCALAR_VALUE_TYPE_TO_PROTO_VALUE as TO_PROTO
    from feast.type_map import feast_value_type_to_python_type, python_values_to_proto_values
    from feast.value_type import ValueType

    # Feast stores func(value) in the proto field, whose Python type is what comes back out.
    field_types: dict[ValueType, type] = {
        ValueType.INT32: int,
        ValueType.INT64: int,
        ValueType.DOUBLE: float,
        ValueType.STRING: str,
        ValueType.BOOL: bool,
    }
    if value_type in field_types:
        convert = TO_PROTO[value_type][1]
        field_type = field_types[value_type]

        def cast(value: Any) -> Any:
            if value is None or value != value:  # Feast turns null and NaN into an empty value
                return None
            return field_type(convert(value))

        def cast_column(values: Sequence[Any]) -> list[Any]:
            # Usually the UDF already returns the field's type and no NaN: nothing to convert.
            if all(type(v) is field_type for v in values) and (
                field_type is not float or all(v == v for v in values)
            ):
                return list(values)
            return [cast(v) for v in values]

        return cast_column

    def round_trip(values: Sequence[Any]) -> list[Any]:
        protos = python_values_to_proto_values(list(values), value_type)
        return [feast_value_type_to_python_type(p, value_type) for p in protos]

    return round_trip


class _Transformer:
    """Runs the feature service's on-demand views on read columns through their own transformation."""

    def __init__(self, plan: FeaturePlan) -> None:
        self.steps = []
        for odfv in plan.on_demand_views:
            aliases = [
                (feature.name, f"{projection.name}__{feature.name}")
                for projection in odfv.source_feature_view_projections.values()
                for feature in projection.features
            ]
            wanted = {f.name for f in odfv.features} & set(plan.output_names)
            casts = {
                f.name: _column_caster(f.dtype.to_value_type()) for f in odfv.features if f.name in wanted
            }
            self.steps.append((odfv.feature_transformation, odfv.singleton, aliases, casts))

    def apply(self, columns: dict[str, list[Any]], n_rows: int) -> None:
        for transformation, singleton, aliases, casts in self.steps:
            inputs = dict(columns)
            # The UDF may address a source feature by its short or its "view__feature" name, as in Feast.
            for short, full in aliases:
                if short in inputs:
                    inputs[full] = inputs[short]
            if singleton:
                rows = [
                    transformation.transform_singleton({k: [v[i]] for k, v in inputs.items()})
                    for i in range(n_rows)
                ]
                outputs = {name: [row[name] for row in rows] for name in casts}
            else:
                outputs = transformation.transform(inputs)
            for name, cast in casts.items():
                columns[name] = cast(outputs[name])


def _summarize(
    plan: FeaturePlan,
    columns: Mapping[str, list[Any]],
    view_times: Mapping[str, list[float | None]],
    event_times: Sequence[float],
) -> tuple[list[list[str]], list[list[str]], list[list[str]]]:
    """Per row: null features, features past their view's TTL at the event time, entities never seen."""
    n_rows = len(event_times)
    missing: list[list[str]] = [[] for _ in range(n_rows)]
    stale: list[list[str]] = [[] for _ in range(n_rows)]
    unknown: list[list[str]] = [[] for _ in range(n_rows)]
    for name in plan.output_names:
        column = columns.get(name)
        if column is not None and None in column:  # a scan in C; most columns have no nulls
            for i, value in enumerate(column):
                if value is None:
                    missing[i].append(name)
    features_of_view = plan.features_of_view
    for entity in plan.entities:
        views = plan.presence_views[entity.name]
        for i, seen in enumerate(zip(*(view_times[v.name] for v in views), strict=True)):
            if seen.count(None) == len(seen):
                unknown[i].append(entity.name)
        for view in entity.views:
            names = features_of_view.get(view.name)
            if not view.ttl_seconds or not names:
                continue
            for i, (seen_at, event_at) in enumerate(zip(view_times[view.name], event_times, strict=True)):
                if seen_at is not None and event_at - seen_at > view.ttl_seconds:
                    stale[i].extend(names)
    return missing, stale, unknown


class RedisFeatureReader:
    """Feast's Redis online read for one feature service, in one pipelined round trip."""

    def __init__(
        self, plan: FeaturePlan, connection: dict[str, Any], key_version: int, busy_wait: float = 0.0
    ) -> None:
        if plan.fast_path_blocker:
            raise ValueError(f"the direct Redis read does not cover {plan.fast_path_blocker}")
        import hiredis
        from google.protobuf.timestamp_pb2 import Timestamp

        self.plan = plan
        self._connection = connection
        # Seconds the event loop may poll for Redis's answer instead of sleeping (packed_commands).
        self.busy_wait = busy_wait
        # redis.asyncio packs commands in Python, rebuilding the buffer per argument (for a 20-field HMGET,
        # longer than the round trip): hiredis packs in C, and each entity's command is cached.
        self._pack = hiredis.pack_command
        self._timestamp_from = Timestamp.FromString
        # Per entity and view, one column decoder per feature, resolved once (ValueType hashes slowly).
        self._decoders = {
            entity.name: [[_column_decoder(t) for t in view.value_types] for view in entity.views]
            for entity in plan.entities
        }
        # Per entity, Feast's key of its join-key values, resolved once.
        self._key_of = {
            e.name: libraries.feast.key_encoder(plan.project, e.join_keys, e.key_types, key_version)
            for e in plan.entities
        }
        # Packed HMGET commands of recently seen entities (customers and merchants recur); bounded.
        self._commands: dict[tuple[Any, ...], bytes] = {}
        self._transformer = _Transformer(plan)
        self._client: Redis | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    def client(self) -> Redis:
        """The client of the running event loop: redis.asyncio connections belong to the loop that opened them."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            from redis.asyncio import ConnectionPool, Redis
            from redis.asyncio.connection import Connection, SSLConnection
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            params = dict(self._connection)
            pool = ConnectionPool(
                connection_class=SSLConnection if params.pop("ssl", False) else Connection,
                **params,
                # No per-read socket timeout: it arms a timer per reply (1,000 in a batch); one deadline
                # bounds the whole pipeline instead (see read), and a cancelled read drops its connection.
                socket_connect_timeout=REDIS_CONNECT_TIMEOUT_SECONDS,
                # One immediate retry (for the readiness ping; reads retry in packed_commands.send) reconnects a
                # pooled connection Redis dropped (a restart); more would only delay the 503 while Redis is down.
                retry=Retry(NoBackoff(), 1),
            )
            self._client = Redis(connection_pool=pool)
            self._client_loop = loop
        return self._client

    async def read(self, rows: Mapping[str, Sequence[Any]], event_times: Sequence[float]) -> OnlineFeatures:
        """Features for every row; ``rows`` holds the join keys and the on-demand views' request fields."""
        from redis.exceptions import ConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        n_rows = len(event_times)
        if len(self._commands) > CACHE_LIMIT:
            self._commands.clear()
        # Distinct entities only: a batch reading one merchant a hundred times reads it once.
        reads: list[tuple[EntityPlan, list[bytes], list[int]]] = []
        for entity in self.plan.entities:
            commands, positions = self._entity_commands(entity, rows, n_rows)
            reads.append((entity, commands, positions))
        try:
            async with asyncio.timeout(REDIS_TIMEOUT_SECONDS):
                replies = await send(
                    self.client().connection_pool,
                    [c for _, commands, _ in reads for c in commands],
                    busy_wait=self.busy_wait,
                )
        except (ConnectionError, RedisTimeoutError, OSError, TimeoutError) as error:
            reason = str(error) or f"no answer within {REDIS_TIMEOUT_SECONDS}s"
            raise OnlineStoreUnavailable(
                f"online feature store unavailable: Redis did not answer: {reason}"
            ) from error

        columns: dict[str, list[Any]] = {k: list(rows[k]) for k in rows}
        view_times: dict[str, list[float | None]] = {}
        offset = 0
        for entity, keys, positions in reads:
            # Field by field across the distinct entities (one decoder per column), then out to the rows.
            fields = list(zip(*replies[offset : offset + len(keys)], strict=True))
            offset += len(keys)
            fan_out = len(keys) != n_rows  # rows repeat an entity: index; otherwise rows are the entities
            index = 0
            for view, decoders in zip(entity.views, self._decoders[entity.name], strict=True):
                for name, decode in zip(view.features, decoders, strict=True):
                    values = decode(fields[index])
                    columns[name] = [values[p] for p in positions] if fan_out else values
                    index += 1
                times = [self._seconds(raw) if raw else None for raw in fields[index]]
                view_times[view.name] = [times[p] for p in positions] if fan_out else times
                index += 1
        self._transformer.apply(columns, n_rows)
        result = {name: columns[name] for name in (*self.plan.join_keys, *self.plan.output_names)}
        missing, stale, unknown = _summarize(self.plan, result, view_times, event_times)
        return OnlineFeatures(result, missing, stale, unknown)

    def _entity_commands(
        self, entity: EntityPlan, rows: Mapping[str, Sequence[Any]], n_rows: int
    ) -> tuple[list[bytes], list[int]]:
        """The packed HMGET of each distinct entity (Feast's key, its fields), and which one each row reads."""
        try:
            key_columns = [rows[k] for k in entity.join_keys]
        except KeyError as error:
            raise ValueError(f"rows lack the join key {error} of entity {entity.name}") from error
        cache = self._commands
        key_of = self._key_of[entity.name]
        index: dict[tuple[Any, ...], int] = {}
        commands: list[bytes] = []
        positions: list[int] = []
        for values in zip(*key_columns, strict=True):
            position = index.get(values)
            if position is None:
                position = index[values] = len(commands)
                cached = cache.get((entity.join_keys, values))
                if cached is None:
                    key = key_of(values)
                    cached = cache[(entity.join_keys, values)] = self._pack(("HMGET", key, *entity.fields))
                commands.append(cached)
            positions.append(position)
        if len(positions) != n_rows:
            raise ValueError(
                f"join key columns of {entity.name} hold {len(positions)} rows, expected {n_rows}"
            )
        return commands, positions

    def _seconds(self, raw: bytes) -> float:
        """A view's ``_ts`` field (a protobuf Timestamp, as Feast writes it) in epoch seconds."""
        ts = self._timestamp_from(raw)
        return ts.seconds + ts.nanos / 1e9

    async def ping(self) -> bool:
        """Whether Redis answers now (readiness)."""
        try:
            async with asyncio.timeout(REDIS_TIMEOUT_SECONDS):
                return bool(await self.client().ping())
        except Exception as error:  # any failure means "not ready", reported rather than raised
            logger.warning("Redis online store is not reachable: %s", error)
            return False

    async def close(self) -> None:
        if self._client is not None:
            # RuntimeError: its event loop is gone (a test client's), so nothing is left to close.
            with contextlib.suppress(RuntimeError):
                await self._client.aclose(close_connection_pool=True)
            self._client = None


class SdkFeatureReader:
    """The plain path: Feast's ``get_online_features`` (any online store, including the SQLite fallback)."""

    def __init__(self, plan: FeaturePlan, store: FeatureStore) -> None:
        self.plan = plan
        self._store = store
        self._service = store.get_feature_service(plan.feature_service, allow_cache=True)
        # The SDK reports event times only for returned features: one returned feature per view stands for it.
        returned = set(plan.output_names)
        self._first_feature = {
            view.name: next((f for f in view.features if f in returned), "")
            for entity in plan.entities
            for view in entity.views
        }

    async def read(self, rows: Mapping[str, Sequence[Any]], event_times: Sequence[float]) -> OnlineFeatures:
        columns, view_times = await asyncio.to_thread(self._read, rows)
        missing, stale, unknown = _summarize(self.plan, columns, view_times, event_times)
        return OnlineFeatures(columns, missing, stale, unknown)

    def _read(
        self, rows: Mapping[str, Sequence[Any]]
    ) -> tuple[dict[str, list[Any]], dict[str, list[float | None]]]:
        from feast.online_response import TIMESTAMP_POSTFIX

        try:
            response = self._store.get_online_features(features=self._service, entity_rows=dict(rows))
        except Exception as error:
            if _is_connection_error(error):
                raise OnlineStoreUnavailable(f"online feature store unavailable: {error}") from error
            raise
        raw = response.to_dict(include_event_timestamps=True)
        columns = {k: v for k, v in raw.items() if not k.endswith(TIMESTAMP_POSTFIX)}
        # Feast reports a never-written view's features with timestamp 0.
        view_times: dict[str, list[float | None]] = {}
        for entity in self.plan.entities:
            for view in entity.views:
                stamps = raw.get(self._first_feature.get(view.name, "") + TIMESTAMP_POSTFIX)
                n_rows = len(next(iter(columns.values()), []))
                view_times[view.name] = [s or None for s in stamps] if stamps else [None] * n_rows
        return columns, view_times

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None


def _is_connection_error(error: Exception) -> bool:
    try:
        from redis.exceptions import ConnectionError, TimeoutError
    except ImportError:  # pragma: no cover - redis is a dependency of the project
        return isinstance(error, OSError)
    return isinstance(error, ConnectionError | TimeoutError | OSError)


def open_feature_reader(
    settings: Settings, feature_service_name: str, busy_wait: float = 0.0
) -> FeatureReader:
    """The fastest reader that reproduces Feast's answer for this store and feature service (``busy_wait``:
    seconds the event loop may poll for Redis's answer, ``packed_commands``)."""
    from feast.infra.online_stores.redis import RedisOnlineStoreConfig, RedisType

    store = settings.feature_store()
    plan = plan_feature_read(store, feature_service_name)
    config = store.config.online_store
    if isinstance(config, RedisOnlineStoreConfig) and config.redis_type == RedisType.redis:
        if plan.fast_path_blocker is None:
            nodes, params = libraries.feast.parse_redis_connection_string(config.connection_string)
            connection = {"host": nodes[0]["host"], "port": int(nodes[0]["port"]), **params}
            logger.info("reading %s from Redis directly (one pipelined round trip)", feature_service_name)
            return RedisFeatureReader(
                plan, connection, store.config.entity_key_serialization_version, busy_wait=busy_wait
            )
        logger.warning("reading %s through Feast's SDK: %s", feature_service_name, plan.fast_path_blocker)
    return SdkFeatureReader(plan, store)
