"""The window processor: keeps the windowed feature views exact in the online store, transaction by transaction.

    python -m services.stream.processor

It reads the transactions stream with a consumer group and, for each transaction, updates every feature
view declared as windows over transactions (``services/stream/windows.py``; today ``customer_activity`` and
``merchant_activity``) for the transaction's customer and merchant. After it has processed a transaction, the
online value of each view is exactly the row the batch feature pipeline computes for the entity's newest
transaction: same declaration, same arithmetic, written in Feast's own Redis layout.

State: each entity's events within its view's horizon, in memory (``EntityWindows``, an LRU of
``stream_cache_entities``) and in Redis (a sorted set per entity, ``rtml:windows:<view>:<Feast key>``, which
expires when the entity is idle longer than the horizon). An entity's state change and online values are one
atomic write; a batch's go as Lua calls of up to ``WRITE_ENTITIES`` entities, then the acknowledgement. A crash
(kill -9) loses nothing acknowledged and repeats nothing: the unacknowledged batch is read again, and an entity
whose write had landed finds the batch's events in its state. An event id already in an entity's state is not
counted again (a duplicate, a replay), and an event older than every window of the entity's newest one changes
nothing.

Several processes share the work by partitions of the entities: ``stream_partitions`` = N, each process leases
one partition (``rtml:lease:windows:<i>-of-<N>``), reads the stream with its partition's consumer group and
updates only its partition's entities; spare processes wait for a lease to expire. Every entity has exactly
one writer, and a process that lost its lease cannot write (each Lua call checks the lease, and the
acknowledgement's transaction watches it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache, cached_property
from typing import TYPE_CHECKING, Any

import orjson

from model_store import libraries
from model_store.settings import redacted_url
from services.packed_commands import Channel
from services.stream.consumer import FENCED, Command, Effects, Entry
from services.stream.events import TransactionEvent, decode_entries, raw_row
from services.stream.runner import Role, main
from services.stream.windows import STAMP_DELAY_US, UNITS, EntityWindows, WindowedView, windowed_views

if TYPE_CHECKING:
    from feast import FeatureStore, FeatureView
    from redis.asyncio import Redis

    from services.stream.settings import StreamSettings

logger = logging.getLogger(__name__)

GROUP = "windows"
STATE_PREFIX = b"rtml:windows:"


@dataclass(frozen=True)
class Script:
    """A Lua script Redis runs atomically, called by its SHA1 (loaded once per connection to a Redis)."""

    source: str

    @cached_property
    def sha(self) -> str:
        import hashlib

        return hashlib.sha1(self.source.encode()).hexdigest()


# A batch's writes, one entity after another: add the entity's new events to its state (a sorted set by time),
# drop what no window reaches, keep the state while the entity is active, then set the view's values on Feast's
# hash with Feast's key TTL. Nothing is written unless KEYS[1] (the partition's lease) holds ARGV[1] (this
# process's token; '' when unfenced): the writes go outside the consumer's fenced transaction. Then KEYS holds
# (state, hash) per entity. ARGV goes on with the key TTL (0 for none); the number of views, then per view m and
# its m hash fields; then per entity: its view's number, the cut-off score, the idle expiry (ms), n and n (time,
# event) pairs, then 1 and the view's m values, or 0 (the state alone changes).
# One command per ``WRITE_ENTITIES`` entities: a command per entity cost the processor more in packing and
# replies than the windows.
WRITE_SCRIPT = Script(
    f"""
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('{FENCED} ' .. KEYS[1] .. ' is not held by ' .. ARGV[1])
end
"""
    + """
local ttl = tonumber(ARGV[2])
local views = {}
local at = 4
for v = 1, tonumber(ARGV[3]) do
  views[v] = {at + 1, tonumber(ARGV[at])}
  at = at + 1 + views[v][2]
end
for k = 2, #KEYS, 2 do
  local view = views[tonumber(ARGV[at])]
  local n = tonumber(ARGV[at + 3])
  local first = at + 4
  local last = first + 2 * n - 1
  for start = first, last, 1000 do
    redis.call('ZADD', KEYS[k], unpack(ARGV, start, math.min(start + 999, last)))
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[k], '-inf', ARGV[at + 1])
  redis.call('PEXPIRE', KEYS[k], ARGV[at + 2])
  at = last + 1
  if ARGV[at] == '1' then
    local fields, m = view[1], view[2]
    local pairs = {}
    for i = 0, m - 1 do
      pairs[2 * i + 1] = ARGV[fields + i]
      pairs[2 * i + 2] = ARGV[at + 1 + i]
    end
    redis.call('HSET', KEYS[k + 1], unpack(pairs))
    if ttl > 0 then
      redis.call('EXPIRE', KEYS[k + 1], ttl)
    end
    at = at + 1 + m
  else
    at = at + 1
  end
end
return (#KEYS - 1) / 2
"""
)
# Entities per Lua call. Redis serves nobody else during one (about 11 µs per entity here): a batch's writes go
# as calls of at most this many, so a processor that catches up with large batches holds up the scoring
# service's reads for about 6 ms at a time, not for the whole batch (77 ms at 5,000 events as one call).
WRITE_ENTITIES = 500
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True)
class OnlineLayout:
    """One windowed view as Feast keeps it in Redis: the entity key, a murmur3 field per feature, ``_ts:<view>``."""

    view: WindowedView
    redis_key: Callable[[Any], bytes]
    fields: tuple[bytes, ...]
    ts_field: bytes
    encoders: tuple[Callable[[Any], bytes], ...]
    stamp: Callable[[int], bytes]
    key_ttl_seconds: int | None

    @classmethod
    def of(cls, store: FeatureStore, feature_view: FeatureView, view: WindowedView) -> OnlineLayout:
        key_type = feature_view.entity_columns[0].dtype.to_value_type()
        types = {f.name: f.dtype.to_value_type().name for f in feature_view.features}
        values = _scalar_encoder()
        config = store.config
        encode_key = libraries.feast.key_encoder(
            config.project, [view.key], [key_type], config.entity_key_serialization_version
        )
        return cls(
            view=view,
            redis_key=lambda key: encode_key((key,)),
            fields=tuple(libraries.feast.feature_field(view.name, f.name) for f in view.features),
            ts_field=libraries.feast.timestamp_field(view.name),
            encoders=tuple(
                values.int64 if types[f.name] == "INT64" else values.double for f in view.features
            ),
            stamp=values.timestamp,
            key_ttl_seconds=getattr(config.online_store, "key_ttl_seconds", None),
        )

    @property
    def hash_fields(self) -> tuple[bytes, ...]:
        """The view's fields in Feast's hash, in the order of ``hash_values``: ``_ts`` first, then each feature."""
        return (self.ts_field, *self.fields)

    def hash_values(self, values: Sequence[Any], stamp_us: int) -> list[bytes]:
        """The bytes Feast's writer leaves in ``hash_fields`` for the view's values (in its features' order)."""
        out = [self.stamp(stamp_us)]
        out += [encode(value) for encode, value in zip(self.encoders, values, strict=True)]
        return out


@cache
def _scalar_encoder() -> libraries.feast.ScalarEncoder:
    return libraries.feast.ScalarEncoder()


def partition_of(view: str, key: Any, partitions: int) -> int:
    """The partition an entity of a view belongs to (stable across processes and restarts)."""
    return zlib.crc32(f"{view}:{key}".encode()) % partitions


@dataclass
class _Entity:
    layout: OnlineLayout
    redis_key: bytes
    state_key: bytes
    windows: EntityWindows
    # The batch that last changed it: a batch's commit may still be in flight while the next is computed.
    touched: int = 0


# (event id, its time in microseconds, its row, (index of the view, the entity's key in that view), backfill?)
Target = tuple[str, int, dict[str, Any], tuple[int, Any], bool]
BACKFILL = "backfill"


@dataclass(frozen=True)
class StateRef:
    """An entity of one view whose state is not in memory: where Redis keeps it."""

    view: int
    key: Any
    redis_key: bytes
    state_key: bytes


class WindowState:
    """The processor's plain logic: events in, Redis commands out, with the window state it keeps in memory."""

    def __init__(
        self,
        layouts: Sequence[OnlineLayout],
        partition: int = 0,
        partitions: int = 1,
        cache_limit: int = 1_000_000,
        write_entities: int = WRITE_ENTITIES,
        fence: tuple[str, bytes] | None = None,
    ) -> None:
        self.layouts = list(layouts)
        self.partition = partition
        self.partitions = partitions
        self.cache_limit = cache_limit
        self.write_entities = write_entities
        self.cache: dict[tuple[int, Any], _Entity] = {}
        self.evicted = 0
        self.generation = 0
        self._unit_columns = sorted({c for layout in self.layouts for c in layout.view.unit_columns})
        self._other_columns = sorted(
            {c for layout in self.layouts for c in layout.view.columns} - set(self._unit_columns)
        )
        # Per view, the columns a member of its state holds after the event id.
        self._columns = [layout.view.columns for layout in self.layouts]
        ttls = {layout.key_ttl_seconds or 0 for layout in self.layouts}
        if len(ttls) > 1:
            raise ValueError(f"windowed views of one online store have different key TTLs: {sorted(ttls)}")
        # The script's first key and arguments: the lease and this process's token (each write checks them), the
        # key TTL, then each view's hash fields.
        self._lease_key: str | bytes = fence[0] if fence is not None else b""
        self._header: list[Any] = [
            fence[1] if fence is not None else b"",
            ttls.pop() if ttls else 0,
            len(self.layouts),
        ]
        for layout in self.layouts:
            self._header += (len(layout.hash_fields), *layout.hash_fields)

    def mine(self, events: Iterable[TransactionEvent]) -> list[Target]:
        """(event id, time, row, (view index, entity key), backfill) for each view of each event whose entity is
        this partition's; the row holds every column the views aggregate, summed ones in integer units."""
        out: list[Target] = []
        unit_columns, other_columns = self._unit_columns, self._other_columns
        for event in events:
            transaction = event.transaction
            raw = raw_row(transaction)
            row = {c: round(raw[c] * UNITS) for c in unit_columns}
            for c in other_columns:
                row[c] = raw[c]
            time_us = (transaction.timestamp - EPOCH) // ONE_MICROSECOND
            backfill = event.source == BACKFILL
            for index, layout in enumerate(self.layouts):
                key = raw[layout.view.key]
                if (
                    self.partitions == 1
                    or partition_of(layout.view.name, key, self.partitions) == self.partition
                ):
                    out.append((transaction.transaction_id, time_us, row, (index, key), backfill))
        return out

    def missing(self, targets: Iterable[Target]) -> list[StateRef]:
        """Entities of the batch whose state is not in memory: load them (``load``) before ``apply``."""
        refs: dict[tuple[int, Any], StateRef] = {}
        cache = self.cache
        for _, _, _, entity_key, _ in targets:
            if entity_key not in cache and entity_key not in refs:
                index, key = entity_key
                layout = self.layouts[index]
                redis_key = layout.redis_key(key)
                state_key = STATE_PREFIX + layout.view.name.encode() + b":" + redis_key
                refs[entity_key] = StateRef(index, key, redis_key, state_key)
        return list(refs.values())

    def load(self, ref: StateRef, members: Sequence[tuple[bytes, float]]) -> None:
        """Rebuild an entity's windows from its sorted set in Redis (``ZRANGE ... WITHSCORES``; empty if new)."""
        layout = self.layouts[ref.view]
        windows = EntityWindows(layout.view)
        columns = layout.view.columns
        for member, score in members:
            event_id, *values = orjson.loads(member)
            windows.add(event_id, int(score), dict(zip(columns, values, strict=True)))
        self.cache[(ref.view, ref.key)] = _Entity(layout, ref.redis_key, ref.state_key, windows)

    def apply(self, targets: Iterable[Target]) -> list[Command]:
        """Count each event into its entities' windows; returns the state-and-online writes of the entities
        touched, one Lua call per ``write_entities`` of them. Each call is atomic, checks the lease itself and
        is idempotent (an entity's state holds the ids of the events it counted), so they may commit one at a time
        before the batch is acknowledged."""
        added: dict[tuple[int, Any], tuple[_Entity, list[Any]]] = {}
        online: set[tuple[int, Any]] = set()
        cache, columns_of = self.cache, self._columns
        generation = self.generation = self.generation + 1
        for event_id, time_us, row, entity_key, backfill in targets:
            entity = cache.get(entity_key)
            if entity is None:
                index, key = entity_key
                raise KeyError(
                    f"state of {self.layouts[index].view.name} {key!r} was not loaded before apply"
                )
            if entity.windows.add(event_id, time_us, row):
                member = orjson.dumps([event_id, *[row[c] for c in columns_of[entity_key[0]]]])
                touched = added.get(entity_key)
                if touched is None:
                    touched = added[entity_key] = (entity, [])
                    entity.touched = generation
                touched[1].extend((time_us, member))
                if not backfill:
                    online.add(entity_key)
        if not added:
            return []
        entities = list(added.items())
        return [
            self._write(entities[start : start + self.write_entities], online)
            for start in range(0, len(entities), self.write_entities)
        ]

    def _write(
        self, entities: list[tuple[tuple[int, Any], tuple[_Entity, list[Any]]]], online: set[tuple[int, Any]]
    ) -> Command:
        """One Lua call writing these entities' new events to their state and, unless backfill, their values."""
        keys: list[str | bytes] = [self._lease_key]
        arguments = list(self._header)
        for entity_key, (entity, members) in entities:
            view, windows, layout = entity.layout.view, entity.windows, entity.layout
            newest = windows.newest
            assert newest is not None
            keys += (entity.state_key, entity.redis_key)
            arguments += (
                entity_key[0] + 1,
                newest - view.horizon_us,
                # Idle longer than its horizon (plus a day), an entity's state says nothing any window needs.
                view.horizon_us // 1000 + 86_400_000,
                len(members) // 2,
                *members,
            )
            # Backfill fills the state only: the batch pipeline wrote those entities' online values from all
            # of their history, which the state (the horizon before the newest backfilled transaction) lacks.
            if entity_key in online:
                arguments.append(1)
                arguments += layout.hash_values(windows.feature_values(), newest + STAMP_DELAY_US)
            else:
                arguments.append(0)
        return ("EVALSHA", WRITE_SCRIPT.sha, len(keys), *keys, *arguments)

    def trim(self) -> None:
        """Keep about ``cache_limit`` entities in memory, evicting ones the last batch did not change: its commit
        may still be in flight, and an entity reloaded from Redis before it lands would miss its events."""
        excess = len(self.cache) - self.cache_limit
        if excess > 0:
            # Insertion order approximates recency: an evicted entity is reloaded from Redis when it comes back.
            budget = excess + self.cache_limit // 10
            for key in [k for k, e in self.cache.items() if e.touched < self.generation][:budget]:
                del self.cache[key]
                self.evicted += 1

    def forget(self) -> None:
        """Drop the in-memory state (after a commit that did not happen): it is reloaded from Redis."""
        self.cache.clear()


class WindowProcessor:
    """A consumer-group handler around ``WindowState``: decode, load what is missing, apply."""

    def __init__(self, client: Redis, state: WindowState) -> None:
        self.client = client
        self.state = state
        # The state's reads are written before the handler first waits: a deferred commit goes after them.
        self._reads = Channel(client.connection_pool)
        self.processed = 0
        self._script_loaded = False

    def forget(self) -> None:
        """After a failed commit or a Redis outage: reload the state, and the script (a restarted Redis has none)."""
        self.state.forget()
        self._script_loaded = False

    async def handle(self, entries: list[Entry]) -> Effects:
        effects = Effects()
        events = [event for _, event in decode_entries(entries, effects.dead_letters)]
        self.state.trim()
        targets = self.state.mine(events)
        missing = self.state.missing(targets)
        if missing:
            replies = await self._reads.send(
                [("ZRANGE", ref.state_key, 0, -1, "WITHSCORES") for ref in missing]
            )
            for ref, flat in zip(missing, replies, strict=True):
                self.state.load(ref, list(zip(flat[::2], map(float, flat[1::2]), strict=True)))
        else:
            await asyncio.sleep(0)  # nothing to read: the previous batch's deferred commit may go now
        if not self._script_loaded:
            await self.client.script_load(WRITE_SCRIPT.source)
            self._script_loaded = True
        # Each write is atomic, idempotent and fenced on its own (``apply``): they go before the acknowledgement,
        # and Redis serves others between them.
        effects.steps = self.state.apply(targets)
        self.processed += len(events)
        return effects


def open_layouts(settings: StreamSettings) -> list[OnlineLayout]:
    """The windowed views of the applied Feast registry, with their Redis layouts."""
    store = settings.feature_store()
    feature_views = {v.name: v for v in store.list_feature_views(allow_cache=False)}
    views = windowed_views(feature_views.values())
    if not views:
        raise LookupError(
            f"the Feast registry at {redacted_url(str(settings.feast_registry))} declares no windowed feature views: "
            "apply the feature repository first (the feature pipeline does)"
        )
    if store.config.online_store.type != "redis":
        raise ValueError(
            f"the window processor writes Feast's Redis layout; online store is {store.config.online_store.type!r}"
        )
    return [OnlineLayout.of(store, feature_views[v.name], v) for v in views]


async def wait_for_layouts(settings: StreamSettings, stopping: asyncio.Event) -> list[OnlineLayout] | None:
    """The windowed views, once the registry declares them (a new platform starts the processor before the
    first feature pipeline run applies the repository); None if stopped first."""
    announced = False
    while not stopping.is_set():
        try:
            return open_layouts(settings)
        except LookupError as error:
            if not announced:
                logger.warning("%s; checking again every 10 s", error)
                announced = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), timeout=10)
    return None


class PartitionLease:
    """A partition held by one process: ``SET NX PX`` to take it, renewed while the loop runs."""

    RENEW = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
    REACQUIRE = (
        "local holder = redis.call('GET', KEYS[1]) "
        "if holder == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end "
        "if not holder then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end return 0"
    )

    def __init__(self, client: Redis, key: str, token: bytes, seconds: float) -> None:
        self.client = client
        self.key = key
        self.token = token
        self.ttl_ms = int(seconds * 1000)
        self._renewed = 0.0

    async def acquire(self) -> bool:
        if await self.client.set(self.key, self.token, nx=True, px=self.ttl_ms):
            self._renewed = time.monotonic()
            return True
        return False

    def renewal_due(self) -> bool:
        """A third of the lease has passed since it was last renewed."""
        return time.monotonic() - self._renewed >= self.ttl_ms / 3000

    async def renew(self, reacquire: bool = False) -> bool:
        """Extend the lease (at most every third of its length); False once another process holds it.

        ``reacquire`` (after a Redis outage, the state read anew): a lease that expired while Redis was down and
        nobody took since is taken again, instead of stopping a process no other one replaced.
        """
        if not reacquire and not self.renewal_due():
            return True
        script = self.REACQUIRE if reacquire else self.RENEW
        held = await self.client.eval(script, 1, self.key, self.token, self.ttl_ms)
        self._renewed = time.monotonic()
        return bool(held)

    async def release(self) -> None:
        await self.client.eval(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
            1,
            self.key,
            self.token,
        )


def lease_key(project: str, partition: int, partitions: int) -> str:
    return f"rtml:lease:windows:{partition}-of-{partitions}:{project}"


async def agree_on_partitions(client: Redis, settings: StreamSettings, stopping: asyncio.Event) -> bool:
    """Wait until no processor of another partition count holds a lease, then record ours as the count.

    Processors with different counts would each own some entity, and two writers of one entity corrupt its
    state: changing ``stream_partitions`` means stopping every processor first (the new groups then replay the
    stream from its start; each transaction still counts once). False if stopped first.
    """
    project, n = settings.feast_project, settings.stream_partitions
    scheme = f"rtml:partitions:windows:{project}"
    announced = False
    while not stopping.is_set():
        await client.set(scheme, n, nx=True)
        current = int(await client.get(scheme) or n)
        if current == n:
            return True
        held = await client.exists(*(lease_key(project, p, current) for p in range(current)))
        if not held:
            await client.set(scheme, n)
            logger.info("partition count changed from %d to %d", current, n)
            return True
        if not announced:
            logger.warning(
                "processors with %d partitions still hold %d leases: stop them before running with "
                "RTML_STREAM_PARTITIONS=%d; waiting",
                current,
                held,
                n,
            )
            announced = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), timeout=settings.stream_lease_seconds / 2)
    return False


async def acquire_partition(
    client: Redis, settings: StreamSettings, token: bytes, stopping: asyncio.Event
) -> tuple[int, PartitionLease] | None:
    """Wait for a free partition and lease it (None if stopped first)."""
    n = settings.stream_partitions
    if not await agree_on_partitions(client, settings, stopping):
        return None
    announced = False
    while not stopping.is_set():
        for partition in range(n):
            lease = PartitionLease(
                client, lease_key(settings.feast_project, partition, n), token, settings.stream_lease_seconds
            )
            if await lease.acquire():
                return partition, lease
        if not announced:
            logger.info("all %d partitions are leased: waiting as a spare", n)
            announced = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), timeout=settings.stream_lease_seconds / 2)
    return None


async def window_role(settings: StreamSettings, client: Redis, stopping: asyncio.Event) -> Role | None:
    """Lease a partition (waiting as a spare while all are held), then consume the transactions for it."""
    import os
    import socket

    layouts = await wait_for_layouts(settings, stopping)
    if layouts is None:
        return None
    token = f"{socket.gethostname()}-{os.getpid()}".encode()
    acquired = await acquire_partition(client, settings, token, stopping)
    if acquired is None:
        return None
    partition, lease = acquired
    n = settings.stream_partitions
    logger.info(
        "window processor: partition %d of %d, views %s, stream %s",
        partition,
        n,
        ", ".join(layout.view.name for layout in layouts),
        settings.stream("transactions"),
    )
    state = WindowState(layouts, partition, n, settings.stream_cache_entities, fence=(lease.key, lease.token))
    processor = WindowProcessor(client, state)
    return Role(
        name="windows",
        group=f"{GROUP}-{partition}-of-{n}",
        streams=[settings.stream("transactions")],
        handler=processor.handle,
        fence=lease,
        on_state_lost=processor.forget,
        release=lease.release,
        pace_seconds=settings.processor_pace_seconds,
        defer_commits=True,
        batch_size=settings.processor_batch_size,
    )


if __name__ == "__main__":
    main(window_role)
