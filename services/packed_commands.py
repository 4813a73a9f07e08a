"""Redis commands packed by hiredis and sent in one write on an asyncio connection: one kept per pool for
one-shot calls (``send``; a pooled one while another call holds it), or one kept by a user whose commands go one
batch after another (``Channel``, ``TransactionChannel``).

A sender that waits on Redis with nothing else to do may ask for a busy wait (``busy_wait`` seconds): the event
loop keeps polling its sockets instead of sleeping until the reply wakes it. On a virtual machine an idle core
halts, and waking it costs tens of microseconds, twice per round trip; the scoring service trades that CPU
for latency (``RTML_REDIS_BUSY_WAIT_MICROSECONDS``, figures: docs/architecture.md). Each poll yields the core
to any other process that wants it.

redis-py's pipeline object packs each command in Python and keeps per-command bookkeeping and response
callbacks, a large share of a batch feature read and of a stream commit (figures: docs/architecture.md, "Why
it is built this way"). hiredis packs in C and the replies are read straight off the connection. A connection
that failed or was cancelled with replies unread is dropped, never returned to the pool in that state.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import weakref
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

if TYPE_CHECKING:
    from redis.asyncio import ConnectionPool

Command = tuple[Any, ...]


async def send(
    pool: ConnectionPool, commands: Sequence[Command | bytes], retry: bool = True, busy_wait: float = 0.0
) -> list[Any]:
    """Replies of ``commands`` (tuples, or bytes packed already), in order; one write, on the pool's kept
    connection when no other call holds it.

    A connection Redis dropped (a restart) is replaced once when ``retry``; reply errors are raised after every
    reply is read. ``busy_wait``: at most this many seconds of the loop polling for the replies (see above).
    """
    packed = [c if isinstance(c, bytes) else hiredis.pack_command(c) for c in commands]
    try:
        return await _send_once(pool, packed, busy_wait)
    except RedisConnectionError:
        if not retry:
            raise
        return await _send_once(pool, packed, busy_wait)  # on a fresh connection


# Per pool, a channel no call is using. Taking a connection from redis-py's pool and giving it back (its lock,
# a check for unread data, observability hooks) cost about 40 µs per call here, a round trip's worth: the
# scoring service pays it twice per request (features, decision record).
_idle: weakref.WeakKeyDictionary[ConnectionPool, Channel] = weakref.WeakKeyDictionary()


async def _send_once(pool: ConnectionPool, packed: list[bytes], busy_wait: float) -> list[Any]:
    channel = _idle.pop(pool, None) or Channel(pool)
    # One pass of the event loop before writing, as the pool's checkout made (its check for unread data awaits):
    # without it, /score's p99 at one connection was 5.2-5.8 ms instead of 2.4-2.7 (a stream of 100,000+
    # decisions, measured 2026-12-05); which ready callback it lets run first is not established.
    await asyncio.sleep(0)
    try:
        replies = await channel.send(packed, busy_wait)
    except BaseException:
        await channel.close()  # a failed send has dropped its connection; a reply error left it clean
        raise
    if pool in _idle:  # another call kept one meanwhile: one idle channel per pool is enough
        await channel.close()
    else:
        _idle[pool] = channel
    return replies


class _Polling:
    """Keeps one event loop polling (a callback that schedules itself, so the loop's wait for I/O never sleeps)
    while sends await replies, each for at most its budget."""

    def __init__(self) -> None:
        # No reference to the loop: it is this object's key in a weak dictionary.
        self.waiting = 0
        self.deadline = 0.0
        self.polling = False

    @contextlib.contextmanager
    def during(self, seconds: float) -> Iterator[None]:
        self.deadline = max(self.deadline, time.monotonic() + seconds)
        self.waiting += 1
        if not self.polling:
            self.polling = True
            asyncio.get_running_loop().call_soon(self._poll)
        try:
            yield
        finally:
            self.waiting -= 1
            if not self.waiting:
                self.deadline = 0.0  # a finished wait's budget must not carry over to the next one

    def _poll(self) -> None:
        if self.waiting and time.monotonic() < self.deadline:
            # Polling must not take the core from a process that has work (a stream processor beside the
            # service): give it way, then poll again.
            os.sched_yield()
            asyncio.get_running_loop().call_soon(self._poll)
        else:
            self.polling = False


_polling: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Polling] = weakref.WeakKeyDictionary()


def _busy_wait(seconds: float) -> contextlib.AbstractContextManager[None]:
    """The running loop polls for up to ``seconds`` while the block awaits (nothing when ``seconds`` is 0)."""
    if seconds <= 0:
        return contextlib.nullcontext()
    loop = asyncio.get_running_loop()
    polling = _polling.get(loop)
    if polling is None:
        polling = _polling[loop] = _Polling()
    return polling.during(seconds)


class TransactionAborted(RuntimeError):
    """A watched key changed (or held another value) before ``EXEC``: nothing was done."""


class Channel:
    """A connection kept for one user's commands, one batch after another: no pool to go through, so a batch is
    written before its sender first waits (what a consumer that orders its reads and writes relies on)."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self._connection: Any = None

    async def send(self, commands: Sequence[Command | bytes], busy_wait: float = 0.0) -> list[Any]:
        """Replies of ``commands`` (tuples, or bytes packed already), in order (one write); reply errors are
        raised after every reply is read. ``busy_wait``: see the module docstring."""
        packed = [c if isinstance(c, bytes) else hiredis.pack_command(c) for c in commands]
        connection = await self._connect()
        try:
            await connection.send_packed_command(packed, check_health=False)
            replies: list[Any] = []
            error: ResponseError | None = None
            with _busy_wait(busy_wait):
                for _ in commands:
                    try:
                        replies.append(await connection.read_response())
                    except ResponseError as failed:
                        error = error or failed
                        replies.append(failed)
        except BaseException:
            await self.close(drop=True)
            raise
        if error is not None:
            raise error
        return replies

    async def _connect(self) -> Any:
        if self._connection is None:
            self._connection = await self.pool.get_connection()
        return self._connection

    async def close(self, drop: bool = False) -> None:
        """Give the connection back; ``drop``: disconnect it first (replies or a watch may linger on it)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            if drop:
                await connection.disconnect(nowait=True)
            await self.pool.release(connection)


class TransactionChannel(Channel):
    """A connection kept for one writer's transactions, one after another: each ``MULTI``/``EXEC`` in one write,
    the first command error raised (nothing done).

    With ``watch`` = (key, value), a transaction runs only while the key holds the value (a lease). The first
    checks it with a round trip (``WATCH``, ``GET``) before its ``MULTI``/``EXEC``; each transaction's write ends
    with the next one's ``WATCH`` and ``GET``, so the next is a single write with no round trip before it: it runs
    if the value was right then and the key has not changed since (``WATCH``), else ``TransactionAborted``.
    Whoever changes the key on purpose (renewing the lease) calls ``rewatch``.
    """

    def __init__(self, pool: ConnectionPool, watch: tuple[str, bytes] | None = None) -> None:
        super().__init__(pool)
        self.watch = watch
        # WATCH is on for this connection and the key held the value when it began.
        self._watching = False

    def rewatch(self) -> None:
        """The key changed on purpose: check it again (a round trip) before the next transaction."""
        self._watching = False

    async def close(self, drop: bool = False) -> None:
        # A connection left watching would abort another user's transaction: dropped, not pooled as it is.
        await super().close(drop or self.watch is not None)
        self._watching = False

    async def execute(self, commands: Sequence[Command]) -> list[Any]:
        connection = await self._connect()
        try:
            return await self._execute(connection, commands)
        except TransactionAborted:
            raise
        except BaseException:
            # Failed or cancelled with replies unread: the connection is dropped, never reused in that state.
            await self.close(drop=True)
            raise

    async def _execute(self, connection: Any, commands: Sequence[Command]) -> list[Any]:
        pack = hiredis.pack_command
        if self.watch is not None and not self._watching:
            key, expected = self.watch
            await connection.send_packed_command(
                [pack(("UNWATCH",)), pack(("WATCH", key)), pack(("GET", key))], check_health=False
            )
            await connection.read_response()
            await connection.read_response()
            holder = await connection.read_response()
            if holder != expected:
                await connection.send_packed_command([pack(("UNWATCH",))], check_health=False)
                await connection.read_response()
                raise TransactionAborted(f"{key} holds {holder!r}, not {expected!r}")
        packed = [pack(("MULTI",))]
        packed.extend(pack(command) for command in commands)
        packed.append(pack(("EXEC",)))
        if self.watch is not None:
            packed += [pack(("WATCH", self.watch[0])), pack(("GET", self.watch[0]))]
        self._watching = False
        await connection.send_packed_command(packed, check_health=False)
        error: ResponseError | None = None
        for _ in range(len(commands) + 1):  # +OK for MULTI, then QUEUED (or an error) per command
            try:
                await connection.read_response()
            except ResponseError as refused:
                error = error or refused
        try:
            replies = await connection.read_response()
        except ResponseError as aborted:  # EXECABORT after a command refused while queueing
            error, replies = error or aborted, []
        if self.watch is not None:
            await connection.read_response()
            self._watching = await connection.read_response() == self.watch[1]
        if error is not None:
            raise error
        if replies is None:
            raise TransactionAborted(f"{self.watch[0] if self.watch else '?'} changed before EXEC")
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return replies
