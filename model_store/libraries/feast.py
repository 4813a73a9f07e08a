"""Feast's Redis online format and planning, through Feast's own functions, including private ones.

Our fast paths write (``flows/feature_store/materialize.py``) and read (``services/scorer/online_features.py``)
Feast's Redis layout directly, and a stream processor can do the same with the functions here. The layout:
one hash per entity, keyed by Feast's entity-key serialization followed by the project name; per feature a
field named by the 4-byte murmur3 hash of ``"<view>:<feature>"``, holding a serialized ``ValueProto``
(``b""`` for a missing scalar); per view a field ``_ts:<view>`` holding a protobuf ``Timestamp``.

Private names of Feast 0.67.0 this module uses (everything else is Feast's public API):

- ``feast.infra.online_stores.helpers._redis_key``: an entity's Redis key (``redis_key``, ``key_encoder``);
- ``feast.infra.online_stores.helpers._mmh3``: a feature's field name (``feature_field``);
- ``RedisOnlineStore._generate_hset_keys_for_features``: a view's fields in read order (``hset_fields``);
- ``RedisOnlineStore._parse_connection_string``: ``connection_string`` to hosts and options
  (``parse_redis_connection_string``);
- ``FeatureStore._get_provider().online_store._get_client``: Feast's own Redis client (``redis_client``);
- ``feast.utils._columns_to_proto_values`` and ``_build_entity_keys``: Arrow columns to ``ValueProto``s
  and entity keys, as ``write_to_online_store`` converts them (``columns_to_proto_values``,
  ``build_entity_keys``, ``value_bytes``, ``column_value_bytes``, ``entity_redis_keys``);
- ``feast.utils._get_online_request_context`` and ``_parse_feature_ref``: how ``get_online_features``
  resolves a feature service into views, features and request fields (``online_request_context``,
  ``parse_feature_ref``).

Every function checks the installed Feast version first (``require_version``, once per process); the hot
paths get functions resolved once (``key_encoder``). ``tests/model_store/libraries/test_feast.py`` holds
them to Feast's own writer and reader; the fast writer's and reader's parity tests hold the paths built on
them to ``write_to_online_store`` and ``get_online_features``. Nothing is patched. Feast's import-time cost
is typeguard's business (``model_store/libraries/typeguard.py``): import this module freely, Feast itself is
imported on first use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache
from typing import TYPE_CHECKING, Any, NamedTuple

from model_store.libraries.versions import check_version

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    from feast import FeatureService, FeatureStore, FeatureView, OnDemandFeatureView
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
    from feast.protos.feast.types.Value_pb2 import Value as ValueProto
    from feast.value_type import ValueType

WRITTEN_FOR = "0.67.0"
TIMESTAMP_FIELD_PREFIX = "_ts:"
# What ``timestamp_micros`` gives for an absent ``_ts`` field: older than any stored time.
NEVER = -(2**63)


@cache
def require_version() -> None:
    """Fail loudly unless Feast is installed at ``WRITTEN_FOR`` (checked once per process)."""
    check_version("feast", WRITTEN_FOR, __name__)


# --- Keys ---------------------------------------------------------------------------------------------------


def redis_key(project: str, entity_key: EntityKeyProto, version: int) -> bytes:
    """The Redis key of an entity: Feast's serialization of ``entity_key`` (``version``) plus the project."""
    require_version()
    from feast.infra.online_stores.helpers import _redis_key

    return _redis_key(project, entity_key, entity_key_serialization_version=version)


def key_encoder(
    project: str, join_keys: Sequence[str], value_types: Sequence[ValueType], version: int
) -> Callable[[Sequence[Any]], bytes]:
    """A function from an entity's join-key values (in ``join_keys`` order) to its Redis key, resolved once.

    For the request path: per call it builds the values' ``ValueProto``s and the ``EntityKey`` and serializes
    them, with nothing looked up.
    """
    require_version()
    from feast.infra.online_stores.helpers import _redis_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey

    names = list(join_keys)
    builders = [_key_value_builder(t) for t in value_types]

    def encode(values: Sequence[Any]) -> bytes:
        protos = [build(v) for v, build in zip(values, builders, strict=True)]
        return _redis_key(project, EntityKey(join_keys=names, entity_values=protos), version)

    return encode


def _key_value_builder(value_type: ValueType) -> Callable[[Any], ValueProto]:
    """A join-key value as the ``ValueProto`` Feast keys it by (Feast's own type-to-field map)."""
    from feast.protos.feast.types.Value_pb2 import Value
    from feast.type_map import PROTO_VALUE_TO_VALUE_TYPE_MAP, python_values_to_proto_values

    field = {t: f for f, t in PROTO_VALUE_TO_VALUE_TYPE_MAP.items()}.get(value_type)
    if field in ("int32_val", "int64_val", "string_val"):
        return lambda v: Value(**{field: v})
    return lambda v: python_values_to_proto_values([v], value_type)[0]


def build_entity_keys(
    n_rows: int, join_keys: dict[str, ValueType], proto_values: dict[str, list[ValueProto]]
) -> list[EntityKeyProto]:
    """Feast's ``EntityKey`` per row from converted join-key columns (see ``columns_to_proto_values``)."""
    require_version()
    from feast.utils import _build_entity_keys

    return _build_entity_keys(n_rows, join_keys, proto_values)


def entity_redis_keys(
    frame: pd.DataFrame, join_keys: dict[str, ValueType], project: str, version: int
) -> list[bytes]:
    """The Redis key of each row's entity, converted as ``write_to_online_store`` converts join keys.

    A single INT64 join key (the common case) is encoded as one fixed-width layout learned from Feast's own
    key function and checked against it (``fixed_width``); anything else goes through Feast row by row.
    """
    require_version()
    import numpy as np
    import pyarrow as pa
    from feast.value_type import ValueType

    if len(join_keys) == 1 and next(iter(join_keys.values())) == ValueType.INT64:
        (name,) = join_keys
        encode = key_encoder(project, [name], [ValueType.INT64], version)
        keys = fixed_width(frame[name].to_numpy(np.int64), lambda v: encode([int(v)]), "<i8")
        if keys is not None:
            return list(keys)
    from feast.infra.online_stores.helpers import _redis_key

    protos = columns_to_proto_values(
        pa.RecordBatch.from_pandas(frame[list(join_keys)], preserve_index=False), list(join_keys.items())
    )
    return [_redis_key(project, key, version) for key in build_entity_keys(len(frame), join_keys, protos)]


# --- Fields -------------------------------------------------------------------------------------------------


def feature_field(view_name: str, feature_name: str) -> bytes:
    """The hash field of a feature: Feast's 4-byte murmur3 of ``"<view>:<feature>"``."""
    require_version()
    from feast.infra.online_stores.helpers import _mmh3

    return _mmh3(f"{view_name}:{feature_name}")


def timestamp_field(view_name: str) -> bytes:
    """The hash field holding a view's event timestamp: ``_ts:<view>``."""
    require_version()
    return f"{TIMESTAMP_FIELD_PREFIX}{view_name}".encode()


def hset_fields(
    view: FeatureView, features: Sequence[str], stored_name: str
) -> tuple[tuple[str, ...], tuple[bytes, ...]]:
    """The features Feast's Redis store reads for ``view`` and their fields, the view's ``_ts`` field last.

    ``features`` empty means all of the view's features; ``stored_name`` is the view's name in the store
    (versioned when online versioning is on).
    """
    require_version()
    from feast.infra.online_stores.redis import RedisOnlineStore

    names, fields = RedisOnlineStore()._generate_hset_keys_for_features(
        view, list(features), fv_name_override=stored_name
    )
    return tuple(names[:-1]), tuple(f.encode() if isinstance(f, str) else f for f in fields)


# --- Values -------------------------------------------------------------------------------------------------


def columns_to_proto_values(
    batch: pa.RecordBatch, columns: list[tuple[str, ValueType]]
) -> dict[str, list[ValueProto]]:
    """Feast's ``ValueProto``s of Arrow columns, as ``write_to_online_store`` converts them."""
    require_version()
    from feast.utils import _columns_to_proto_values

    return _columns_to_proto_values(batch, columns)


def _scalar_bytes(values: list[Any], value_type: ValueType) -> list[bytes]:
    """Serialized ``ValueProto`` of each present scalar, through Feast's own map from value type to proto field."""
    from feast.protos.feast.types.Value_pb2 import Value
    from feast.type_map import PYTHON_SCALAR_VALUE_TYPE_TO_PROTO_VALUE

    field_name, convert, _ = PYTHON_SCALAR_VALUE_TYPE_TO_PROTO_VALUE[value_type]
    return [Value(**{field_name: convert(v)}).SerializeToString() for v in values]


def _converted_bytes(cells: pd.Series, value_type: ValueType) -> list[bytes]:
    """Serialized ``ValueProto`` of each cell through Feast's Arrow converter, as ``write_to_online_store``
    converts a frame's column (the column's dtype decides the Arrow type, even for missing cells)."""
    import pyarrow as pa

    batch = pa.RecordBatch.from_pandas(cells.to_frame("value"), preserve_index=False)
    return [p.SerializeToString() for p in columns_to_proto_values(batch, [("value", value_type)])["value"]]


def _is_scalar_type(value_type: ValueType) -> bool:
    from feast.type_map import PYTHON_SCALAR_VALUE_TYPE_TO_PROTO_VALUE

    return value_type in PYTHON_SCALAR_VALUE_TYPE_TO_PROTO_VALUE


def _is_missing(value: Any) -> bool:
    """None, NaN, NaT or pandas' NA: what Feast stores as an empty value of a scalar type."""
    import pandas as pd

    return value is None or bool(pd.api.types.is_scalar(value) and pd.isna(value))


def value_bytes(value: Any, value_type: ValueType) -> bytes:
    """The stored bytes of one Python or numpy value of ``value_type``: what ``column_value_bytes`` gives it.

    A missing scalar (None, NaN, NaT) is ``b""``; lists, timestamps and other non-scalar types go through
    Feast's converter, which may store a missing value as something else (a NaT timestamp as its integer).
    """
    require_version()
    import numpy as np
    import pandas as pd

    if not _is_scalar_type(value_type):
        return column_value_bytes(pd.Series([value]), value_type)[0]
    if _is_missing(value):
        return b""
    return _scalar_bytes([value.item() if isinstance(value, np.generic) else value], value_type)[0]


class ScalarEncoder:
    """``value_bytes`` of int64 and double values, one value at a time at the speed a stream needs.

    A double is a tag byte and eight little-endian bytes (learned from Feast's serializer and checked on sample
    values; if the layout ever differs, every value goes through Feast); int64 bytes are memoized, since
    counts repeat.
    """

    MEMO_LIMIT = 100_000

    def __init__(self) -> None:
        import struct

        from feast.protos.feast.types.Value_pb2 import Value

        require_version()
        self._value = Value
        self._pack = struct.Struct("<d").pack
        self._double_tag: bytes | None = Value(double_val=1.5).SerializeToString()[:-8]
        samples = (1.5, 0.0, -2.25e300, 1e-300)
        if any(self.double(v) != Value(double_val=v).SerializeToString() for v in samples):
            self._double_tag = None
        self._ints: dict[int, bytes] = {}
        self._seconds: dict[int, bytes] = {}
        self._timestamp_layout_checked = True
        moments = (0, 1, 999_999, 1_000_000, 1_764_547_200_123_456, 4_102_444_800_000_001)
        self._timestamp_layout_checked = all(self.timestamp(m) == timestamp_bytes_of(m) for m in moments)

    def timestamp(self, micros: int) -> bytes:
        """``timestamp_bytes_of(micros)``: protobuf's two varint fields, the seconds' part memoized (stamps of a
        live stream share their seconds): 1.2 µs against 1.8 µs to build a ``Timestamp`` message, measured."""
        if micros < 0 or not self._timestamp_layout_checked:
            return timestamp_bytes_of(micros)
        seconds, remainder = divmod(micros, 1_000_000)
        head = self._seconds.get(seconds)
        if head is None:
            if len(self._seconds) > self.MEMO_LIMIT:
                self._seconds.clear()
            head = self._seconds[seconds] = b"\x08" + _varint(seconds) if seconds else b""
        return head + b"\x10" + _varint(remainder * 1_000) if remainder else head

    def double(self, value: float) -> bytes:
        if self._double_tag is None:
            return self._value(double_val=float(value)).SerializeToString()
        return self._double_tag + self._pack(value)

    def int64(self, value: int) -> bytes:
        encoded = self._ints.get(value)
        if encoded is None:
            if len(self._ints) > self.MEMO_LIMIT:
                self._ints.clear()
            encoded = self._ints[value] = self._value(int64_val=int(value)).SerializeToString()
        return encoded


def column_value_bytes(column: pd.Series, value_type: ValueType) -> np.ndarray:
    """The stored bytes of every cell of a column (an object array), converted once per distinct value.

    Doubles are fixed width: their layout is learned from Feast's serializer once and applied to the whole
    column. Other scalars go through Feast's own map from value type to proto field; a missing one is Feast's
    empty ``ValueProto``, which serializes to ``b""``. Other types go through Feast's Arrow converter, one
    cell per distinct value (every cell when they are lists).
    """
    require_version()
    import numpy as np
    import pandas as pd
    from feast.protos.feast.types.Value_pb2 import Value
    from feast.value_type import ValueType

    if value_type == ValueType.DOUBLE and column.notna().all():
        packed = fixed_width(
            column.to_numpy(np.float64), lambda v: Value(double_val=v).SerializeToString(), "<f8"
        )
        if packed is not None:
            return packed
    try:
        codes, uniques = pd.factorize(column, use_na_sentinel=True)
    except TypeError:  # unhashable cells (lists)
        return np.array(_converted_bytes(column, value_type), dtype=object)
    if _is_scalar_type(value_type):
        serialized = _scalar_bytes(uniques.tolist(), value_type)
        missing = b""
    else:
        # One cell per distinct value, then a missing one if any: Feast decides what a missing value becomes.
        kinds, first = np.unique(codes, return_index=True)
        cells = _converted_bytes(column.iloc[[*first[kinds >= 0], *first[kinds < 0]]], value_type)
        serialized, missing = cells[: len(uniques)], (cells[len(uniques) :] or [b""])[0]
    lookup = np.array([*serialized, missing], dtype=object)
    return lookup[np.where(codes < 0, len(serialized), codes)]


def fixed_width(values: np.ndarray, feast_bytes: Callable[[Any], bytes], dtype: str) -> np.ndarray | None:
    """Apply a fixed-width encoding learned from one call of Feast's serializer to a whole column.

    ``feast_bytes(v)`` is Feast's encoding of ``v``; around the packed value it is constant. Sample cells
    are checked against Feast itself and ``None`` (use the per-value path) is returned if they ever differ,
    so a change of Feast's format cannot corrupt the store.
    """
    require_version()
    import numpy as np

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


def timestamp_bytes(moments: pd.Series | pd.DatetimeIndex) -> list[bytes]:
    """The ``_ts`` field's bytes (a protobuf ``Timestamp``, microsecond precision) of each moment; naive
    moments are taken as UTC."""
    require_version()
    import numpy as np
    import pandas as pd
    from google.protobuf.timestamp_pb2 import Timestamp

    index = pd.DatetimeIndex(moments)
    index = index.tz_localize("UTC") if index.tz is None else index.tz_convert("UTC")
    seconds, remainder = np.divmod(index.as_unit("us").asi8, 1_000_000)
    return [
        Timestamp(seconds=int(s), nanos=int(r) * 1_000).SerializeToString()
        for s, r in zip(seconds, remainder, strict=True)
    ]


def _varint(value: int) -> bytes:
    """Protobuf's base-128 varint of a non-negative integer."""
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def timestamp_bytes_of(micros: int) -> bytes:
    """``timestamp_bytes`` of one moment given in microseconds since the epoch."""
    from google.protobuf.timestamp_pb2 import Timestamp

    seconds, remainder = divmod(micros, 1_000_000)
    return Timestamp(seconds=seconds, nanos=remainder * 1_000).SerializeToString()


def timestamp_micros(raws: Sequence[bytes | None]) -> np.ndarray:
    """Microseconds since the epoch in each ``_ts`` field's bytes (int64); ``NEVER`` where the field is absent."""
    require_version()
    import numpy as np
    from google.protobuf.timestamp_pb2 import Timestamp

    parse = Timestamp.FromString
    micros = []
    for raw in raws:
        if raw:
            ts = parse(raw)
            micros.append(ts.seconds * 1_000_000 + ts.nanos // 1_000)
        else:
            micros.append(NEVER)
    return np.array(micros, dtype=np.int64)


# --- Planning and connections -------------------------------------------------------------------------------


class OnlineRequestContext(NamedTuple):
    """What ``get_online_features`` resolves a feature service into before it reads (Feast's own planner)."""

    feature_refs: list[str]
    on_demand_views: list[OnDemandFeatureView]
    entity_to_join_key: dict[str, str]
    entity_types: dict[str, ValueType]
    join_keys: set[str]
    grouped_refs: list[tuple[FeatureView, list[str]]]
    result_names: set[str]
    request_fields: set[str]
    entityless: bool


def online_request_context(store: FeatureStore, service: FeatureService) -> OnlineRequestContext:
    """Resolve a feature service as ``get_online_features`` does (short feature names, not ``view__feature``)."""
    require_version()
    from feast import utils

    return OnlineRequestContext(
        *utils._get_online_request_context(store.registry, store.project, service, False)
    )


def parse_feature_ref(ref: str) -> tuple[str, int | None, str]:
    """``"view@v2:feature"`` or ``"view:feature"`` as ``(view, version or None, feature)``."""
    require_version()
    from feast import utils

    return utils._parse_feature_ref(ref)


def parse_redis_connection_string(connection_string: str) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """Feast's reading of a Redis ``connection_string``: the ``host``/``port`` nodes and the client options."""
    require_version()
    from feast.infra.online_stores.redis import RedisOnlineStore

    return RedisOnlineStore._parse_connection_string(connection_string)


def redis_client(store: FeatureStore) -> Any:
    """Feast's own Redis client of a store with a Redis online store (its connection parsing, its pool)."""
    require_version()
    return store._get_provider().online_store._get_client(store.config.online_store)
