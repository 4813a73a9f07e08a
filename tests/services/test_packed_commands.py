"""Commands packed by hiredis on kept connections, against the real Redis: a watching channel commits only while
its key holds its value, each commit a single write after the first; one-shot sends reuse one connection."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import pytest
import redis

from services.packed_commands import Channel, TransactionAborted, TransactionChannel
from tests.conftest import REDIS_URL


def _with_keys(body: Callable[[str, redis.Redis], Awaitable[None]]) -> None:
    prefix = f"rtml:test-channel:{uuid.uuid4().hex[:8]}"
    sync = redis.Redis.from_url(REDIS_URL)
    try:
        asyncio.run(body(prefix, sync))
    finally:
        if keys := list(sync.scan_iter(f"{prefix}*", count=10_000)):
            sync.delete(*keys)
        sync.close()


def test_a_watching_channel_commits_while_its_key_holds_the_value_and_never_after() -> None:
    async def body(prefix: str, sync: redis.Redis) -> None:
        from redis.asyncio import Redis

        lease, data = f"{prefix}:lease", f"{prefix}:data"
        sync.set(lease, b"me")
        client = Redis.from_url(REDIS_URL)
        channel = TransactionChannel(client.connection_pool, (lease, b"me"))
        assert await channel.execute([("RPUSH", data, "first")]) == [1]
        assert await channel.execute([("RPUSH", data, "second")]) == [2]  # on the watch the first one left

        sync.set(lease, b"someone else")  # the lease moved between two commits
        with pytest.raises(TransactionAborted):
            await channel.execute([("RPUSH", data, "third")])
        with pytest.raises(TransactionAborted, match="someone else"):
            await channel.execute([("RPUSH", data, "fourth")])  # checked again, and still not ours

        sync.set(lease, b"me")
        channel.rewatch()
        assert await channel.execute([("RPUSH", data, "fifth")]) == [3]
        assert sync.lrange(data, 0, -1) == [b"first", b"second", b"fifth"]
        await channel.close()
        await client.aclose()

    _with_keys(body)


def test_renewing_the_watched_key_aborts_the_next_commit_unless_the_channel_rewatches() -> None:
    async def body(prefix: str, sync: redis.Redis) -> None:
        from redis.asyncio import Redis

        lease, data = f"{prefix}:lease", f"{prefix}:data"
        sync.set(lease, b"me", px=60_000)
        client = Redis.from_url(REDIS_URL)
        channel = TransactionChannel(client.connection_pool, (lease, b"me"))
        await channel.execute([("INCR", data)])

        sync.pexpire(lease, 60_000)  # the holder's own renewal: same value, but the key was touched
        with pytest.raises(TransactionAborted):
            await channel.execute([("INCR", data)])
        sync.pexpire(lease, 60_000)
        channel.rewatch()
        await channel.execute([("INCR", data)])

        assert sync.get(data) == b"2"
        await channel.close()
        await client.aclose()

    _with_keys(body)


def test_a_channel_writes_its_commands_before_its_sender_first_waits() -> None:
    # What a consumer deferring its commit relies on: a read written before the commit's task may run is
    # answered before the commit is executed, so it sees the state before it.
    async def body(prefix: str, sync: redis.Redis) -> None:
        from redis.asyncio import Redis

        key = f"{prefix}:counter"
        client = Redis.from_url(REDIS_URL)
        reads, writes = Channel(client.connection_pool), TransactionChannel(client.connection_pool)
        await reads.send([("GET", key)])
        await writes.execute([("SET", key, 0)])  # both connected

        commit = asyncio.create_task(writes.execute([("INCR", key)]))
        assert await reads.send([("GET", key)]) == [b"0"]
        await commit
        assert await reads.send([("GET", key)]) == [b"1"]
        await reads.close()
        await writes.close()
        await client.aclose()

    _with_keys(body)


def test_one_shot_sends_keep_one_connection_and_replace_it_when_redis_drops_it() -> None:
    async def body(prefix: str, sync: redis.Redis) -> None:
        from redis.asyncio import Redis

        from services.packed_commands import send

        key = f"{prefix}:n"
        client = Redis.from_url(REDIS_URL)
        pool = client.connection_pool
        checkouts = 0
        get_connection = pool.get_connection

        async def counted(*args: object, **kwargs: object) -> object:
            nonlocal checkouts
            checkouts += 1
            return await get_connection(*args, **kwargs)

        pool.get_connection = counted  # type: ignore[method-assign]
        name = f"{prefix}-kept".replace(":", "-")
        assert await send(pool, [("CLIENT", "SETNAME", name), ("INCR", key)]) == [b"OK", 1]
        for expected in (2, 3):  # the same connection, not taken from the pool again
            assert await send(pool, [("INCR", key), ("CLIENT", "GETNAME")]) == [expected, name.encode()]
        assert checkouts == 1
        # Redis drops the kept connection (a restart, a proxy): the send goes again on a fresh one.
        (kept,) = [c for c in sync.client_list() if c.get("name") == name]
        sync.client_kill_filter(_id=kept["id"])
        assert await send(pool, [("INCR", key), ("CLIENT", "GETNAME")]) == [4, None]
        assert checkouts == 2
        # Concurrent sends: one on the kept connection, the others on pooled ones; all answer, one is kept.
        replies = await asyncio.gather(*(send(pool, [("INCR", key)]) for _ in range(5)))
        assert sorted(r[0] for r in replies) == [5, 6, 7, 8, 9]
        assert checkouts == 6
        assert await send(pool, [("INCR", key)]) == [10]
        assert checkouts == 6
        await client.aclose()

    _with_keys(body)


def test_a_busy_wait_polls_the_loop_while_a_reply_is_awaited_and_no_longer_than_its_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import time

    from services import packed_commands

    polls: list[float] = []
    poll = packed_commands._Polling._poll

    def counted(self: packed_commands._Polling) -> None:
        polls.append(time.monotonic())
        poll(self)

    monkeypatch.setattr(packed_commands._Polling, "_poll", counted)

    async def body(prefix: str, sync: redis.Redis) -> None:
        from redis.asyncio import Redis

        from services.packed_commands import send

        client = Redis.from_url(REDIS_URL)
        pool = client.connection_pool
        assert await send(pool, [("PING",)]) == [b"PONG"]
        assert polls == []  # no busy wait asked: the loop sleeps until Redis answers
        assert await send(pool, [("PING",), ("INCR", f"{prefix}:n")], busy_wait=0.5) == [b"PONG", 1]
        assert polls  # the loop polled while the replies were awaited...
        await asyncio.sleep(0.01)
        count = len(polls)
        await asyncio.sleep(0.05)
        assert len(polls) == count  # ...and stopped once they were read, long before its budget

        # A reply slower than the budget: the loop polls for the budget, then sleeps until the reply.
        polls.clear()
        started = time.monotonic()
        assert await send(pool, [("BLPOP", f"{prefix}:empty", 0.3)], busy_wait=0.02) == [None]
        waited = time.monotonic() - started
        assert waited >= 0.25 and polls and polls[-1] - started < waited / 2
        await client.aclose()

    _with_keys(body)
