"""The window processor: keeps the windowed feature views exact in the online store, transaction by transaction.

    python -m services.stream.processor

It reads the transactions stream with a consumer group and, for each transaction, updates every feature
view declared as windows over transactions (``services/stream/windows.py``; today ``customer_activity`` and
``merchant_activity``) for the transaction's customer and merchant. After it has processed a transaction, the
online value of each view is exactly the row the batch feature pipeline computes for the entity's newest
transaction: same declaration, same arithmetic, written in Feast's own Redis layout.

State: each entity's events within its view's horizon, in memory (``EntityWindows``, an LRU of
``stream_cache_entities``) and in Redis (a sorted set per entity, ``rtml:windows:<view>:<Feast key>``, which
expires when the entity is idle longer than the horizon). A batch's state changes, online values and
acknowledgement are one Redis transaction, so a crash (kill -9) loses nothing acknowledged and repeats nothing:
the unacknowledged batch is read again and the state it finds does not contain it. An event id already in an
entity's state is not counted again (a duplicate, a replay), and an event older than every window of the
entity's newest one changes nothing.

Several processes share the work by partitions of the entities: ``stream_partitions`` = N, each process leases
one partition (``rtml:lease:windows:<i>-of-<N>``), reads the stream with its partition's consumer group and
updates only its partition's entities; spare processes wait for a lease to expire. Every entity has exactly
one writer, and a process that lost its lease cannot commit (the lease is checked inside the transaction).
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
from functools import cache
from typing import TYPE_CHECKING, Any

import orjson

from model_store import libraries
from services.stream.consumer import Command, Effects, Entry
from services.stream.events import MalformedEvent, TransactionEvent, decode, raw_row
from services.stream.runner import Role, main
from services.stream.windows import STAMP_DELAY_US, EntityWindows, WindowedView, event_row, windowed_views

if TYPE_CHECKING:
    from feast import FeatureStore, FeatureView
    from redis.asyncio import Redis

    from services.stream.settings import StreamSettings

logger = logging.getLogger(__name__)

GROUP = "windows"
STATE_PREFIX = b"rtml:windows:"
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
            key_ttl_seconds=getattr(config.online_store, "key_ttl_seconds", None),
        )

    def write(self, redis_key: bytes, values: dict[str, Any], stamp_us: int) -> list[Command]:
        """HSET of the view's values and timestamp, as Feast's writer leaves them (plus its key TTL, if any)."""
        fields: list[bytes] = [self.ts_field, libraries.feast.timestamp_bytes_of(stamp_us)]
        for feature, field, encode in zip(self.view.features, self.fields, self.encoders, strict=True):
            fields += (field, encode(values[feature.name]))
        commands: list[Command] = [("HSET", redis_key, *fields)]
        if self.key_ttl_seconds:
            commands.append(("EXPIRE", redis_key, self.key_ttl_seconds))
        return commands


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


# (event, its raw row, index of the view, the entity's key in that view)
Target = tuple[TransactionEvent, dict[str, Any], int, Any]


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
    ) -> None:
        self.layouts = list(layouts)
        self.partition = partition
        self.partitions = partitions
        self.cache_limit = cache_limit
        self.cache: dict[tuple[int, Any], _Entity] = {}
        self.evicted = 0

    def mine(
        self, events: Iterable[TransactionEvent]
    ) -> list[tuple[TransactionEvent, dict[str, Any], int, Any]]:
        """(event, raw row, view index, entity key) for each view of each event whose entity is this partition's."""
        out = []
        for event in events:
            raw = raw_row(event.transaction)
            for index, layout in enumerate(self.layouts):
                key = raw[layout.view.key]
                if (
                    self.partitions == 1
                    or partition_of(layout.view.name, key, self.partitions) == self.partition
                ):
                    out.append((event, raw, index, key))
        return out

    def missing(self, targets: Iterable[Target]) -> list[StateRef]:
        """Entities of the batch whose state is not in memory: load them (``load``) before ``apply``."""
        refs: dict[tuple[int, Any], StateRef] = {}
        for _, _, index, key in targets:
            if (index, key) not in self.cache and (index, key) not in refs:
                layout = self.layouts[index]
                redis_key = layout.redis_key(key)
                state_key = STATE_PREFIX + layout.view.name.encode() + b":" + redis_key
                refs[(index, key)] = StateRef(index, key, redis_key, state_key)
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
        """Count each event into its entities' windows; returns the state, online and expiry writes."""
        added: dict[tuple[int, Any], tuple[_Entity, list[Any]]] = {}
        for event, raw, index, key in targets:
            entity = self.cache.get((index, key))
            if entity is None:
                raise KeyError(
                    f"state of {self.layouts[index].view.name} {key!r} was not loaded before apply"
                )
            view = entity.layout.view
            row = event_row(view, raw)
            event_id = event.transaction.transaction_id
            time_us = _micros(event)
            if entity.windows.add(event_id, time_us, row):
                member = orjson.dumps([event_id, *(row[c] for c in view.columns)])
                added.setdefault((index, key), (entity, []))[1].extend((time_us, member))
        commands: list[Command] = []
        for entity, members in added.values():
            view, windows = entity.layout.view, entity.windows
            newest = windows.newest
            assert newest is not None
            commands.append(("ZADD", entity.state_key, *members))
            commands.append(("ZREMRANGEBYSCORE", entity.state_key, "-inf", newest - view.horizon_us))
            # Idle longer than its horizon, an entity's state says nothing any window needs.
            commands.append(("PEXPIRE", entity.state_key, view.horizon_us // 1000 + 86_400_000))
            commands.extend(
                entity.layout.write(entity.redis_key, windows.features(), newest + STAMP_DELAY_US)
            )
        return commands

    def trim(self) -> None:
        """Keep at most ``cache_limit`` entities in memory (between batches: never one the batch needs)."""
        excess = len(self.cache) - self.cache_limit
        if excess > 0:
            # Insertion order approximates recency: an evicted entity is reloaded from Redis when it comes back.
            for key in list(self.cache)[: excess + self.cache_limit // 10]:
                del self.cache[key]
                self.evicted += 1

    def forget(self) -> None:
        """Drop the in-memory state (after a commit that did not happen): it is reloaded from Redis."""
        self.cache.clear()


def _micros(event: TransactionEvent) -> int:
    moment = event.transaction.timestamp
    return (moment - EPOCH) // ONE_MICROSECOND


class WindowProcessor:
    """A consumer-group handler around ``WindowState``: decode, load what is missing, apply."""

    def __init__(self, client: Redis, state: WindowState) -> None:
        self.client = client
        self.state = state
        self.processed = 0
        self.duplicates = 0

    async def handle(self, entries: list[Entry]) -> Effects:
        effects = Effects()
        events: list[TransactionEvent] = []
        for entry in entries:
            try:
                events.append(decode(entry.id, entry.fields or {}))
            except MalformedEvent as error:
                effects.dead_letters.append((entry, str(error)))
        self.state.trim()
        targets = self.state.mine(events)
        missing = self.state.missing(targets)
        if missing:
            async with self.client.pipeline(transaction=False) as pipe:
                for ref in missing:
                    pipe.zrange(ref.state_key, 0, -1, withscores=True)
                for ref, members in zip(missing, await pipe.execute(), strict=True):
                    self.state.load(ref, members)
        effects.commands = self.state.apply(targets)
        self.processed += len(events)
        return effects


def open_layouts(settings: StreamSettings) -> list[OnlineLayout]:
    """The windowed views of the applied Feast registry, with their Redis layouts."""
    store = settings.feature_store()
    feature_views = {v.name: v for v in store.list_feature_views(allow_cache=False)}
    views = windowed_views(feature_views.values())
    if not views:
        raise LookupError(
            f"the Feast registry at {settings.feast_registry} declares no windowed feature views: "
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

    async def renew(self) -> bool:
        """Extend the lease (at most every third of its length); False once another process holds it."""
        if time.monotonic() - self._renewed < self.ttl_ms / 3000:
            return True
        held = await self.client.eval(self.RENEW, 1, self.key, self.token, self.ttl_ms)
        self._renewed = time.monotonic()
        return bool(held)

    async def release(self) -> None:
        await self.client.eval(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
            1,
            self.key,
            self.token,
        )


async def acquire_partition(
    client: Redis, settings: StreamSettings, token: bytes, stopping: asyncio.Event
) -> tuple[int, PartitionLease] | None:
    """Wait for a free partition and lease it (None if stopped first)."""
    n = settings.stream_partitions
    announced = False
    while not stopping.is_set():
        for partition in range(n):
            lease = PartitionLease(
                client,
                f"rtml:lease:windows:{partition}-of-{n}:{settings.feast_project}",
                token,
                settings.stream_lease_seconds,
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
    state = WindowState(layouts, partition, n, settings.stream_cache_entities)
    return Role(
        name="windows",
        group=f"{GROUP}-{partition}-of-{n}",
        streams=[settings.stream("transactions")],
        handler=WindowProcessor(client, state).handle,
        fence=lease,
        on_state_lost=state.forget,
        release=lease.release,
    )


if __name__ == "__main__":
    main(window_role)
