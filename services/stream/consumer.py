"""A consumer-group member's loop: read a batch, hand it to a handler, commit its effects with the acknowledgement.

Every process that consumes the transactions stream (the window processor, the landing writer, the traffic
log, stream scoring) runs this loop around a plain function from a batch of entries to effects:

- Entries are read with ``XREADGROUP``: first the ones this consumer was given and never acknowledged (a
  crash left them pending), then new ones. A group that does not exist is created at the start of the stream.
- The handler returns Redis commands; they, the dead letters and the ``XACK`` run as one ``MULTI``/``EXEC``.
  Either all of a batch's effects happen and it is acknowledged, or none do and it is read again: delivery is
  at least once, and a handler whose effects are idempotent makes the effect exactly once. Such a handler may
  also return ``steps``: commands sent in one write before that transaction, each atomic on its own (a Lua
  call), so that Redis serves other clients between them; a failure between two leaves effects that the batch,
  read again, repeats without changing them.
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

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.packed_commands import Command, TransactionAborted, TransactionChannel

logger = logging.getLogger(__name__)

# Redis answering again is noticed within a second (a log line per retry while it is down).
MAX_BACKOFF_SECONDS = 1.0
# How a step that checks the fence itself says it is no longer held: its error reply starts with this word.
FENCED = "FENCED"
LAG_CHECK_SECONDS = 2.0


class Fence(Protocol):
    """Something the commit must still hold (a lease): its key is watched and its value checked."""

    key: str
    token: bytes

    def renewal_due(self) -> bool: ...

    async def renew(self, reacquire: bool = False) -> bool: ...


@dataclass
class Entry:
    """One stream entry as read."""

    stream: str
    id: bytes
    # None when the entry was trimmed from the stream (MAXLEN) before this group processed it.
    fields: dict[bytes, bytes] | None


@dataclass
class Effects:
    """What a handler wants done for a batch: Redis commands, entries it refuses (with the reason), and which
    entries to acknowledge now (``None``: the whole batch; a handler that buffers acknowledges later).

    ``steps``: commands run before the transaction of ``commands``, dead letters and acknowledgement, outside it.
    Only for effects that are atomic and idempotent command by command (a batch interrupted after some is read and
    handled again) and that check the fence themselves: a step answering an error that starts with ``FENCED``
    means the fence is no longer held.
    """

    commands: list[Command] = field(default_factory=list)
    dead_letters: list[tuple[Entry, str]] = field(default_factory=list)
    ack: list[Entry] | None = None
    steps: list[Command] = field(default_factory=list)


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
        on_idle: Callable[[], Awaitable[list[Entry]]] | None = None,
        pace_seconds: float = 0.0,
        defer_commits: bool = False,
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
        # Called when a read finds nothing new: a buffering handler writes what is due and returns the entries
        # that may now be acknowledged (otherwise its last rows would wait for the next entry).
        self.on_idle = on_idle
        # Read at most this often unless behind (the processor every 20 ms, the consumers nothing waits on every
        # second): fewer, larger batches cost less per entry and wake the process less often beside the service.
        self.pace_seconds = pace_seconds
        # Behind, send a batch's commit once the next batch's handler first waits on Redis (``process``): for a
        # handler that reads Redis first thing, and suspends once at least when it has nothing to read.
        self.defer_commits = defer_commits
        self.stats = ConsumerStats()
        self._stopping = asyncio.Event()
        self._pending_from: dict[str, bytes | str] = dict.fromkeys(self.streams, "0")
        self._claimed = False
        self._state_reloaded = False
        self._in_flight: asyncio.Task[None] | None = None
        # A full batch's commit, sent once the next batch's handler waits on its own reads (see ``process``).
        self._deferred: tuple[list[Entry], Effects] | None = None
        # Commits go one after another on a connection of their own, each a single write (no round trip to
        # check the lease first: the previous one's write ends with the next one's WATCH).
        self._channel = TransactionChannel(
            client.connection_pool, (fence.key, fence.token) if fence is not None else None
        )
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
                if not self._claimed:
                    await self.claim_pending()
                if self.fence is not None and (self._state_reloaded or self.fence.renewal_due()):
                    # A renewal touches the watched lease key: never while a commit is between WATCH and EXEC
                    # (the commit would abort as if another process had taken the lease).
                    await self.settle()
                    renewed = await self.fence.renew(reacquire=self._state_reloaded)
                    self._channel.rewatch()  # the renewal touched the watched key
                    if not renewed:
                        raise FenceLost(f"lease {self.fence.key} is held by another process")
                    self._state_reloaded = False
                read_at = time.monotonic()
                entries = await self.read()
                self.stats.redis_ok = True
                if entries:
                    await self.process(entries)
                else:
                    await self.settle()
                    if self.on_idle is not None and (done := await self.on_idle()):
                        await self.commit(done, Effects(ack=done))
                if time.monotonic() - self._lag_checked > LAG_CHECK_SECONDS:
                    await self.measure_lag()
                backoff = 0.1
                if self.pace_seconds and len(entries) < self.batch_size:
                    await self._sleep(self.pace_seconds - (time.monotonic() - read_at))
            except (RedisConnectionError, RedisTimeoutError, OSError) as error:
                self.stats.redis_ok = False
                self.stats.errors += 1
                # Redis may come back without the last second of what we wrote (it restarted from its
                # append-only file): re-read what is pending and let the handler reload its state.
                await self._read_again()
                # A lease that expired during the outage may be taken again: the state is read anew.
                self._state_reloaded = True
                logger.warning(
                    "%s: Redis unreachable (%s); retrying in %.1fs",
                    self.group,
                    error or type(error).__name__,
                    backoff,
                )
                await self._sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
            except FenceLost as error:
                # The lease expired while this process stalled: a pause of the whole machine (a VM snapshot
                # froze the soak's for ~10 s) or a long collection. If nobody took it meanwhile, nobody wrote
                # the partition: take it again, reload the state and re-read what is pending. Otherwise stop.
                if self.fence is None or not await self.fence.renew(reacquire=True):
                    raise
                logger.warning("%s: %s; nobody had taken it: taken again, state reloaded", self.group, error)
                self.stats.errors += 1
                await self._read_again()
            except ResponseError as error:
                if "NOGROUP" not in str(error):
                    raise
                # Redis lost the group (restarted without persistence): make it again, from the stream's start.
                logger.warning("%s: consumer group missing (%s); creating it again", self.group, error)
                groups_ready = False
                await self._read_again()
                self._state_reloaded = True  # the lease went with the rest of Redis's data
        await self.settle()

    async def _read_again(self) -> None:
        """After Redis lost or refused our writes: drop the commit in flight, re-read every pending entry (taking
        over others' again) and let the handler reload its state from Redis."""
        await self._drop_in_flight()
        self._deferred = None
        await self._channel.close()
        self._pending_from = dict.fromkeys(self.streams, "0")
        self._claimed = False
        if self.on_state_lost is not None:
            self.on_state_lost()

    async def _drop_in_flight(self) -> None:
        """After an error: the commit in flight (if any) has failed or will be read again; wait it out quietly."""
        task, self._in_flight = self._in_flight, None
        if task is not None:
            with contextlib.suppress(BaseException):
                await task

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
        """Entries delivered to this consumer earlier and not acknowledged (a crash, or a handler that buffers)
        first, in order, then new ones."""
        if self._pending_from:
            reply = await self.client.xreadgroup(
                self.group, self.name, dict(self._pending_from), count=self.batch_size
            )
            entries = _entries(reply)
            for stream in list(self._pending_from):
                mine = [e.id for e in entries if e.stream == stream]
                if mine:
                    self._pending_from[stream] = mine[-1]
                else:
                    del self._pending_from[stream]
            if entries:
                return entries
        reply = await self.client.xreadgroup(
            self.group,
            self.name,
            dict.fromkeys(self.streams, ">"),
            count=self.batch_size,
            # A deferred commit waits for this read: never longer than it takes to say there is nothing new.
            block=self.block_ms if self._deferred is None else None,
        )
        return _entries(reply)

    async def process(self, entries: list[Entry]) -> None:
        """Hand the batch to the handler, then commit it while the next one is read and handled.

        One commit is in flight at a time: Redis executes batch k's transaction on its core while this process
        reads and computes batch k+1, and k+1 is committed only after k succeeded. If k fails, k+1's effects are
        dropped with the handler's state, and both batches are read again from the pending entries.

        With ``defer_commits``, when behind (a full batch), batch k's commit is sent only once batch k+1 has been
        read and its handler first waits on Redis: the read and the handler's own reads (the state of entities
        not in memory) then reach Redis before the transaction, instead of waiting while Redis executes it.
        Not behind, the commit goes at once, so nothing waits for entries that are not there yet.
        """
        present = [e for e in entries if e.fields is not None]
        deferred, self._deferred = self._deferred, None
        if deferred is not None:
            # Runs at the handler's first wait on Redis, after its requests are written.
            self._in_flight = asyncio.create_task(self._commit(*deferred))
        effects = await self.handler(present) if present else Effects()
        effects.dead_letters.extend(
            (e, "entry was trimmed from the stream before this group processed it")
            for e in entries
            if e.fields is None
        )
        await self.settle()
        if self.defer_commits and len(entries) >= self.batch_size and not self._stopping.is_set():
            self._deferred = (entries, effects)
        else:
            self._in_flight = asyncio.create_task(self._commit(entries, effects))

    async def settle(self) -> None:
        """Commit what is deferred and wait for the commit in flight; if it failed, the handler forgets its state
        and the error is raised."""
        if self._deferred is not None and self._in_flight is None:
            self._in_flight = asyncio.create_task(self._commit(*self._deferred))
            self._deferred = None
        task, self._in_flight = self._in_flight, None
        if task is None:
            return
        try:
            await task
        except BaseException:
            # The handler's in-memory state moved ahead of what Redis holds: let it forget.
            if self.on_state_lost is not None:
                self.on_state_lost()
            raise

    async def _commit(self, entries: list[Entry], effects: Effects) -> None:
        await self.commit(entries, effects)
        self.stats.batches += 1
        self.stats.entries += len(entries)
        self.stats.dead_letters += len(effects.dead_letters)
        self.stats.last_entry_ms = max(self.stats.last_entry_ms, _entry_ms(entries[-1].id))
        self.stats.lag_seconds = max(0.0, time.time() - self.stats.last_entry_ms / 1000)
        for entry, reason in effects.dead_letters:
            logger.warning("%s: dead-lettered %s %s: %s", self.group, entry.stream, entry.id.decode(), reason)

    async def commit(self, entries: list[Entry], effects: Effects) -> None:
        """The effects' steps, then their commands, dead letters and acknowledgements in one MULTI/EXEC (fenced
        when there is a fence)."""
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
        acknowledged = (
            entries if effects.ack is None else [*effects.ack, *(e for e, _ in effects.dead_letters)]
        )
        by_stream: dict[str, list[bytes]] = {}
        for entry in acknowledged:
            by_stream.setdefault(entry.stream, []).append(entry.id)
        for stream, ids in by_stream.items():
            commands.append(("XACK", stream, self.group, *ids))
        try:
            if effects.steps:
                await self._channel.send(effects.steps)
            await self._channel.execute(commands)
        except (TransactionAborted, ResponseError) as error:
            if isinstance(error, ResponseError) and not str(error).startswith(FENCED):
                raise
            raise FenceLost(
                f"lease {self.fence.key if self.fence else '?'} is no longer ours ({error})"
            ) from None

    async def _sleep(self, seconds: float) -> None:
        if seconds <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)


class FenceLost(RuntimeError):
    """The partition's lease moved to another process: this one must stop writing."""


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


__all__ = ["Effects", "Entry", "Fence", "FenceLost", "GroupConsumer"]
