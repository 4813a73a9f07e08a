"""A consumer-group member's loop: read a batch, hand it to a handler, commit its effects with the acknowledgement.

Every process that consumes the transactions stream (the window processor, the landing writer, the traffic
log, stream scoring) runs this loop around a plain function from a batch of entries to effects:

- Entries are read with ``XREADGROUP``: first the ones this consumer was given and never acknowledged (a
  crash left them pending), then new ones. A group that does not exist is created at the start of the stream.
- The handler returns Redis commands; they, the dead letters and the ``XACK`` run as one ``MULTI``/``EXEC``.
  Either all of a batch's effects happen and it is acknowledged, or none do and it is read again: delivery is
  at least once, and a handler whose effects are idempotent makes the effect exactly once.
- A malformed entry goes to the dead-letter stream with its reason and its original fields, and is
  acknowledged; it never stops the loop.
- Redis down: a log line naming it, back-off up to ``MAX_BACKOFF_SECONDS``, and recovery when it answers
  (a Redis restarted without its data comes back without the group, which is created again).
- A ``Fence`` (the lease of a partition) is checked atomically with the commit: a process that lost its
  partition to another can never commit over it.
- ``stop()`` (SIGTERM) lets the batch in hand finish and commit, then the loop returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import hiredis
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError

logger = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 5.0
LAG_CHECK_SECONDS = 2.0
Command = tuple[Any, ...]


class Fence(Protocol):
    """Something the commit must still hold (a lease): its key is watched and its value checked."""

    key: str
    token: bytes

    async def renew(self) -> bool: ...


@dataclass
class Entry:
    """One stream entry as read."""

    stream: str
    id: bytes
    # None when the entry was trimmed from the stream (MAXLEN) before this group processed it.
    fields: dict[bytes, bytes] | None


@dataclass
class Effects:
    """What a handler wants done for a batch: Redis commands, and entries it refuses (with the reason)."""

    commands: list[Command] = field(default_factory=list)
    dead_letters: list[tuple[Entry, str]] = field(default_factory=list)


Handler = Callable[[list[Entry]], Awaitable[Effects]]


@dataclass
class ConsumerStats:
    """Counters the metrics and the health checks read."""

    batches: int = 0
    entries: int = 0
    dead_letters: int = 0
    errors: int = 0
    last_entry_ms: int = 0
    lag_events: int = 0
    lag_seconds: float = 0.0
    last_loop: float = field(default_factory=time.monotonic)
    redis_ok: bool = False


class GroupConsumer:
    """One member of a consumer group on one or more streams (see the module docstring)."""

    def __init__(
        self,
        client: Redis,
        streams: Sequence[str],
        group: str,
        handler: Handler,
        *,
        dead_letter_stream: str,
        batch_size: int = 1000,
        block_ms: int = 200,
        fence: Fence | None = None,
        name: str | None = None,
        on_state_lost: Callable[[], None] | None = None,
    ) -> None:
        self.client = client
        self.streams = list(streams)
        self.group = group
        self.handler = handler
        self.dead_letter_stream = dead_letter_stream
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.fence = fence
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.on_state_lost = on_state_lost
        self.stats = ConsumerStats()
        self._stopping = asyncio.Event()
        self._pending_done: set[str] = set()
        self._claimed = False
        self._lag_checked = 0.0
        # Entries another member read and never acknowledged are taken over once idle this long: at once
        # behind a fence (the lease says the other member is gone), after a minute otherwise.
        self.claim_idle_ms = 0 if fence is not None else 60_000

    def stop(self) -> None:
        """Finish the batch in hand, commit it and return from ``run``."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def run(self) -> None:
        """Consume until ``stop()``; survives Redis outages and malformed entries."""
        backoff = 0.1
        groups_ready = False
        while not self._stopping.is_set():
            self.stats.last_loop = time.monotonic()
            try:
                if not groups_ready:
                    await self.ensure_groups()
                    groups_ready = True
                if self._pending_done != set(self.streams) and not self._claimed:
                    await self.claim_pending()
                if self.fence is not None and not await self.fence.renew():
                    raise FenceLost(f"lease {self.fence.key} is held by another process")
                entries = await self.read()
                self.stats.redis_ok = True
                if entries:
                    await self.process(entries)
                if time.monotonic() - self._lag_checked > LAG_CHECK_SECONDS:
                    await self.measure_lag()
                backoff = 0.1
            except (RedisConnectionError, RedisTimeoutError, OSError) as error:
                self.stats.redis_ok = False
                self.stats.errors += 1
                # Redis may come back without the last second of what we wrote (it restarted from its
                # append-only file): re-read what is pending and let the handler reload its state.
                self._pending_done.clear()
                self._claimed = False
                if self.on_state_lost is not None:
                    self.on_state_lost()
                logger.warning(
                    "%s: Redis unreachable (%s); retrying in %.1fs",
                    self.group,
                    error or type(error).__name__,
                    backoff,
                )
                await self._sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
            except ResponseError as error:
                if "NOGROUP" not in str(error):
                    raise
                # Redis lost the group (restarted without persistence): make it again, from the stream's start.
                logger.warning("%s: consumer group missing (%s); creating it again", self.group, error)
                groups_ready = False
                self._pending_done.clear()

    async def claim_pending(self) -> None:
        """Take over entries a previous member of the group read and never acknowledged (it crashed)."""
        for stream in self.streams:
            cursor: bytes | str = "0-0"
            while True:
                # Not JUSTID: redis-py then drops the cursor, which a long list of pending entries needs.
                reply = await self.client.xautoclaim(
                    stream,
                    self.group,
                    self.name,
                    self.claim_idle_ms,
                    cursor,
                    count=self.batch_size,
                )
                cursor, claimed = reply[0], reply[1]
                if claimed:
                    logger.info(
                        "%s: took over %d unacknowledged entries of %s", self.group, len(claimed), stream
                    )
                if cursor in (b"0-0", "0-0"):
                    break
        self._claimed = True

    async def measure_lag(self) -> None:
        """Entries the group has not read yet, summed over its streams (Redis 7's ``XINFO GROUPS`` lag)."""
        self._lag_checked = time.monotonic()
        total = 0
        for stream in self.streams:
            for group in await self.client.xinfo_groups(stream):
                if _text(group.get("name")) == self.group:
                    total += int(group.get("lag") or 0)
        self.stats.lag_events = total
        if total == 0:
            self.stats.lag_seconds = 0.0

    async def ensure_groups(self) -> None:
        for stream in self.streams:
            try:
                await self.client.xgroup_create(stream, self.group, id="0", mkstream=True)
                logger.info("created consumer group %s on %s", self.group, stream)
            except ResponseError as error:
                if "BUSYGROUP" not in str(error):
                    raise

    async def read(self) -> list[Entry]:
        """Entries left pending by an earlier run of this consumer first, then new ones."""
        pending = [s for s in self.streams if s not in self._pending_done]
        if pending:
            reply = await self.client.xreadgroup(
                self.group, self.name, dict.fromkeys(pending, "0"), count=self.batch_size
            )
            entries = _entries(reply)
            for stream in pending:
                if not any(e.stream == stream for e in entries):
                    self._pending_done.add(stream)
            if entries:
                return entries
        reply = await self.client.xreadgroup(
            self.group,
            self.name,
            dict.fromkeys(self.streams, ">"),
            count=self.batch_size,
            block=self.block_ms,
        )
        return _entries(reply)

    async def process(self, entries: list[Entry]) -> None:
        present = [e for e in entries if e.fields is not None]
        effects = await self.handler(present) if present else Effects()
        effects.dead_letters.extend(
            (e, "entry was trimmed from the stream before this group processed it")
            for e in entries
            if e.fields is None
        )
        try:
            await self.commit(entries, effects)
        except BaseException:
            # The handler's in-memory state moved ahead of what Redis holds: let it forget.
            if self.on_state_lost is not None:
                self.on_state_lost()
            raise
        self.stats.batches += 1
        self.stats.entries += len(entries)
        self.stats.dead_letters += len(effects.dead_letters)
        self.stats.last_entry_ms = max(self.stats.last_entry_ms, _entry_ms(entries[-1].id))
        self.stats.lag_seconds = max(0.0, time.time() - self.stats.last_entry_ms / 1000)
        for entry, reason in effects.dead_letters:
            logger.warning("%s: dead-lettered %s %s: %s", self.group, entry.stream, entry.id.decode(), reason)

    async def commit(self, entries: list[Entry], effects: Effects) -> None:
        """Effects, dead letters and acknowledgements in one MULTI/EXEC (fenced when there is a fence)."""
        commands: list[Command] = list(effects.commands)
        for entry, reason in effects.dead_letters:
            commands.append(
                (
                    "XADD",
                    self.dead_letter_stream,
                    "*",
                    "reason",
                    reason,
                    "stream",
                    entry.stream,
                    "id",
                    entry.id,
                    "group",
                    self.group,
                    *(item for pair in (entry.fields or {}).items() for item in pair),
                )
            )
        by_stream: dict[str, list[bytes]] = {}
        for entry in entries:
            by_stream.setdefault(entry.stream, []).append(entry.id)
        for stream, ids in by_stream.items():
            commands.append(("XACK", stream, self.group, *ids))
        await execute_atomically(self.client, commands, self.fence)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)


class FenceLost(RuntimeError):
    """The partition's lease moved to another process: this one must stop writing."""


async def execute_atomically(
    client: Redis, commands: Sequence[Command], fence: Fence | None = None
) -> list[Any]:
    """Run ``commands`` as one transaction on a pooled connection, packed by hiredis in one write.

    redis-py's pipeline spends ~10 us of Python per command; a batch of a thousand events writes several
    thousand. With a fence, its key is watched and its value checked first; a change aborts the transaction
    (``FenceLost``). Raises the first command error Redis reports (the transaction then did nothing).
    """
    pool = client.connection_pool
    connection = await pool.get_connection()
    try:
        if fence is not None:
            await connection.send_packed_command(
                [hiredis.pack_command(("WATCH", fence.key)), hiredis.pack_command(("GET", fence.key))]
            )
            await connection.read_response()
            holder = await connection.read_response()
            if holder != fence.token:
                await connection.send_command("UNWATCH")
                await connection.read_response()
                raise FenceLost(f"lease {fence.key} is no longer ours (held by {holder!r})")
        packed = [hiredis.pack_command(("MULTI",))]
        packed.extend(hiredis.pack_command(command) for command in commands)
        packed.append(hiredis.pack_command(("EXEC",)))
        await connection.send_packed_command(packed)
        queued_error: ResponseError | None = None
        for _ in range(len(commands) + 1):  # +OK for MULTI, then QUEUED (or an error) per command
            try:
                await connection.read_response()
            except ResponseError as error:
                queued_error = queued_error or error
        try:
            replies = await connection.read_response()
        except ResponseError as error:  # EXECABORT after a command refused while queueing
            raise queued_error or error from None
        if replies is None:
            raise FenceLost(f"lease {fence.key if fence else '?'} changed during the commit")
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return replies
    except BaseException:
        await connection.disconnect(nowait=True)  # never reuse a connection with unread replies
        raise
    finally:
        await pool.release(connection)


def _entries(reply: Any) -> list[Entry]:
    entries: list[Entry] = []
    if not reply:
        return entries
    items = reply.items() if isinstance(reply, dict) else reply
    for stream, messages in items:
        name = stream.decode() if isinstance(stream, bytes) else stream
        for entry_id, fields in messages:
            entries.append(Entry(name, entry_id, fields))
    return entries


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _entry_ms(entry_id: bytes) -> int:
    return int(entry_id.split(b"-", 1)[0])


__all__ = ["Effects", "Entry", "Fence", "FenceLost", "GroupConsumer", "WatchError", "execute_atomically"]
