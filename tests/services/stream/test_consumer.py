"""The consumer loop against the real Redis: pacing (at most one read per interval unless behind), deferred
commits, and steps committed before a batch's acknowledgement."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid

import pytest
import redis

from services.stream.consumer import Effects, Entry, FenceLost, GroupConsumer
from tests.conftest import REDIS_URL


def test_a_paced_consumer_reads_once_per_interval_unless_a_full_batch_says_it_is_behind() -> None:
    stream = f"rtml:test-pacing:{uuid.uuid4().hex[:8]}"
    sync = redis.Redis.from_url(REDIS_URL)
    for i in range(25):  # a backlog of two full batches of 10 and a partial one
        sync.xadd(stream, {b"n": str(i).encode()})
    batches: list[tuple[float, int]] = []

    async def run() -> None:
        from redis.asyncio import Redis

        client = Redis.from_url(REDIS_URL)

        async def handle(entries: list[Entry]) -> Effects:
            batches.append((time.monotonic(), len(entries)))
            return Effects()

        consumer = GroupConsumer(
            client,
            [stream],
            "paced",
            handle,
            dead_letter_stream=f"{stream}:dead",
            batch_size=10,
            pace_seconds=1.0,
        )

        async def feed() -> None:
            while len(batches) < 3:
                await asyncio.sleep(0.01)
            for i in range(3):  # arrive one by one, faster than the pace
                sync.xadd(stream, {b"n": f"late-{i}".encode()})
                await asyncio.sleep(0.1)
            while sum(n for _, n in batches) < 28:
                await asyncio.sleep(0.01)
            consumer.stop()

        await asyncio.wait_for(asyncio.gather(consumer.run(), feed()), timeout=20)
        await client.aclose()

    try:
        asyncio.run(run())
    finally:
        sync.delete(stream, f"{stream}:dead")
        sync.close()
    sizes = [n for _, n in batches]
    assert sizes[:3] == [10, 10, 5] and sum(sizes) == 28
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(batches)]
    # Behind: the full batches follow each other without the pause; then at most one read per second.
    assert gaps[0] < 0.8 and gaps[1] < 0.8
    assert all(gap >= 0.95 for gap in gaps[2:])
    # The three late entries, 0.1 s apart, came in one read.
    assert sizes[3] == 3


def test_deferred_commits_go_after_the_next_batchs_reads_and_each_batch_commits_once() -> None:
    stream = f"rtml:test-defer:{uuid.uuid4().hex[:8]}"
    counter = f"{stream}:committed"
    sync = redis.Redis.from_url(REDIS_URL)
    for i in range(35):  # three full batches of 10, then 5
        sync.xadd(stream, {b"n": str(i).encode()})
    seen: list[int] = []

    async def run() -> None:
        from redis.asyncio import Redis

        from services.packed_commands import Channel

        client = Redis.from_url(REDIS_URL)
        reads = Channel(client.connection_pool)

        async def handle(entries: list[Entry]) -> Effects:
            # Reads first, as the window processor does: the previous full batch's commit goes after them.
            (value,) = await reads.send([("GET", counter)])
            seen.append(int(value or 0))
            return Effects(commands=[("INCR", counter)])

        consumer = GroupConsumer(
            client,
            [stream],
            "deferring",
            handle,
            dead_letter_stream=f"{stream}:dead",
            batch_size=10,
            defer_commits=True,
        )

        async def stop_when_done() -> None:
            while consumer.stats.entries < 35:
                await asyncio.sleep(0.01)
            consumer.stop()

        await asyncio.wait_for(asyncio.gather(consumer.run(), stop_when_done()), timeout=20)
        await reads.close()
        await client.aclose()

    try:
        asyncio.run(run())
        # Batch k+1 read the count before batch k's commit ran; the last, partial batch committed at once.
        assert seen == [0, 0, 1, 2]
        assert sync.get(counter) == b"4"
        assert sync.xpending(stream, "deferring")["pending"] == 0
    finally:
        sync.delete(stream, counter, f"{stream}:dead")
        sync.close()


def test_steps_go_before_the_acknowledgement_and_a_fenced_step_leaves_the_batch_pending() -> None:
    stream = f"rtml:test-steps:{uuid.uuid4().hex[:8]}"
    log = f"{stream}:log"
    sync = redis.Redis.from_url(REDIS_URL)
    for i in range(15):  # a batch of 10, then one of 5
        sync.xadd(stream, {b"n": str(i).encode()})
    batches = 0

    async def run() -> None:
        from redis.asyncio import Redis

        client = Redis.from_url(REDIS_URL)

        async def handle(entries: list[Entry]) -> Effects:
            nonlocal batches
            batches += 1
            if batches == 1:
                return Effects(
                    steps=[("RPUSH", log, "step-1"), ("RPUSH", log, "step-2")],
                    commands=[("RPUSH", log, "transaction")],
                )
            # As the window processor's writes answer when the partition's lease has moved on.
            refused = "return redis.error_reply('FENCED the lease is held by another process')"
            return Effects(steps=[("EVAL", refused, 0)], commands=[("RPUSH", log, "not reached")])

        consumer = GroupConsumer(
            client, [stream], "stepping", handle, dead_letter_stream=f"{stream}:dead", batch_size=10
        )
        try:
            await asyncio.wait_for(consumer.run(), timeout=20)
        finally:
            await client.aclose()

    try:
        with pytest.raises(FenceLost, match="FENCED"):
            asyncio.run(run())
        assert sync.lrange(log, 0, -1) == [b"step-1", b"step-2", b"transaction"]
        # The first batch was acknowledged with its transaction; the refused one stays to be read again.
        assert sync.xpending(stream, "stepping")["pending"] == 5
    finally:
        sync.delete(stream, log, f"{stream}:dead")
        sync.close()
