"""Redis commands packed by hiredis and sent in one write on a pooled asyncio connection.

redis-py's pipeline object packs each command in Python and keeps per-command bookkeeping and response
callbacks, a large share of a batch feature read and of a stream commit (figures: docs/architecture.md, "Why
it is built this way"). hiredis packs in C and the replies are read straight off the connection. A connection
that failed or was cancelled with replies unread is dropped, never returned to the pool in that state.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

if TYPE_CHECKING:
    from redis.asyncio import ConnectionPool

Command = tuple[Any, ...]


async def send(pool: ConnectionPool, commands: Sequence[Command | bytes], retry: bool = True) -> list[Any]:
    """Replies of ``commands`` (tuples, or bytes packed already), in order; one write, one pooled connection.

    A pooled connection Redis dropped (a restart) is replaced once when ``retry``; reply errors are raised
    after every reply is read.
    """
    packed = [c if isinstance(c, bytes) else hiredis.pack_command(c) for c in commands]
    try:
        return await _send_once(pool, packed)
    except RedisConnectionError:
        if not retry:
            raise
        return await _send_once(pool, packed)  # on a fresh connection


@asynccontextmanager
async def _connection(pool: ConnectionPool) -> AsyncIterator[Any]:
    """A pooled connection, dropped rather than returned when anything failed (replies may be unread)."""
    connection = await pool.get_connection()
    try:
        yield connection
    except BaseException:
        await connection.disconnect(nowait=True)
        raise
    finally:
        await pool.release(connection)


async def _send_once(pool: ConnectionPool, packed: list[bytes]) -> list[Any]:
    async with _connection(pool) as connection:
        await connection.send_packed_command(packed, check_health=False)
        replies: list[Any] = []
        error: ResponseError | None = None
        for _ in packed:
            try:
                replies.append(await connection.read_response())
            except ResponseError as failed:
                error = error or failed
                replies.append(failed)
        if error is not None:
            raise error
        return replies


class TransactionAborted(RuntimeError):
    """A watched key changed (or held another value) before ``EXEC``: nothing was done."""


async def send_transaction(
    pool: ConnectionPool, commands: Sequence[Command], watch: tuple[str, bytes] | None = None
) -> list[Any]:
    """``commands`` as one ``MULTI``/``EXEC`` in one write; the first command error is raised (nothing done).

    ``watch`` = (key, value): the key is watched and must hold the value, else ``TransactionAborted``.
    """
    async with _connection(pool) as connection:
        if watch is not None:
            key, expected = watch
            await connection.send_packed_command(
                [hiredis.pack_command(("WATCH", key)), hiredis.pack_command(("GET", key))]
            )
            await connection.read_response()
            holder = await connection.read_response()
            if holder != expected:
                await connection.send_command("UNWATCH")
                await connection.read_response()
                raise TransactionAborted(f"{key} holds {holder!r}, not {expected!r}")
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
            raise TransactionAborted(f"{watch[0] if watch else '?'} changed before EXEC")
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return replies
