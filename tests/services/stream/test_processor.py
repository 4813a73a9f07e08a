"""The window processor against the real Redis: online values equal the batch computation for every entity,
whatever the order, repetition, crashes and restarts; malformed entries go to the dead-letter stream."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import redis

from model_store.settings import REPO_ROOT, clear_settings, get_settings
from services.stream.consumer import GroupConsumer
from services.stream.events import transactions_of
from services.stream.processor import GROUP, WRITE_ENTITIES, WindowProcessor, WindowState, open_layouts
from services.stream.publish import publish, xadd
from services.stream.settings import StreamSettings, get_stream_settings
from services.stream.windows import WindowedView, compute_windows
from tests.conftest import REDIS_URL, delete_project_keys, unique_project
from tests.fixtures.feature_repo import declared_windowed_views
from tests.services.conftest import RedisServer

START = pd.Timestamp("2026-09-07", tz="UTC")


@pytest.fixture(scope="module")
def stream_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A home whose Feast registry has the repository applied (once for the module: apply costs ~6 s)."""
    from flows.feature_store.definitions import apply_definitions

    home = tmp_path_factory.mktemp("stream") / "rtml"
    env = {
        "RTML_HOME": str(home),
        "RTML_FEAST_PROJECT": unique_project("stream"),
        "RTML_REDIS_URL": REDIS_URL,
        "RTML_STREAM_HEALTH_PORT": "0",
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        clear_settings()
        apply_definitions(get_settings())
        clear_settings()
    yield env
    delete_project_keys(env["RTML_FEAST_PROJECT"])


@pytest.fixture
def stream_settings(stream_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[StreamSettings]:
    """The module's settings with an empty Redis project (each test starts from nothing)."""
    for key, value in stream_env.items():
        monkeypatch.setenv(key, value)
    delete_project_keys(stream_env["RTML_FEAST_PROJECT"])
    clear_settings()
    clear_settings()
    settings = get_stream_settings()
    settings.export_feast_env()
    yield settings
    clear_settings()


def history(n: int = 3_000, seed: int = 1) -> pd.DataFrame:
    from flows.fraud_data.generator import GeneratorConfig, generate_raw_data

    data = generate_raw_data(
        GeneratorConfig(
            n_transactions=n,
            n_customers=n // 20,
            n_merchants=max(5, n // 200),
            start=START,
            days=20,
            seed=seed,
        )
    )
    return data.transactions.sort_values("event_timestamp", kind="stable").reset_index(drop=True)


def publish_frame(
    settings: StreamSettings, frame: pd.DataFrame, url: str | None = None, source: str = "upstream"
) -> int:
    client = redis.Redis.from_url(url or settings.redis_url)
    try:
        return publish(client, settings.stream("transactions"), transactions_of(frame), source, 10_000_000)
    finally:
        client.close()


def drain(
    settings: StreamSettings, partitions: int = 1, timeout: float = 120, write_entities: int = WRITE_ENTITIES
) -> list[WindowProcessor]:
    """Run one in-process processor per partition until every entry of the stream is acknowledged."""

    async def run() -> list[WindowProcessor]:
        from redis.asyncio import Redis

        client = Redis.from_url(settings.redis_url)
        layouts = open_layouts(settings)
        processors, consumers = [], []
        for partition in range(partitions):
            state = WindowState(layouts, partition, partitions, write_entities=write_entities)
            processor = WindowProcessor(client, state)
            processors.append(processor)
            consumers.append(
                GroupConsumer(
                    client,
                    [settings.stream("transactions")],
                    f"{GROUP}-{partition}-of-{partitions}",
                    processor.handle,
                    dead_letter_stream=settings.stream("dead-letter"),
                    on_state_lost=processor.forget,
                )
            )

        async def watch() -> None:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                if all([await group_done(client, settings, c.group) for c in consumers]):
                    break
            for consumer in consumers:
                consumer.stop()

        await asyncio.gather(watch(), *(c.run() for c in consumers))
        await client.aclose()
        return processors

    return asyncio.run(run())


async def group_done(client, settings: StreamSettings, group: str) -> bool:
    stream = settings.stream("transactions")
    last = (await client.xinfo_stream(stream))["last-generated-id"]
    for info in await client.xinfo_groups(stream):
        if info["name"].decode() == group:
            return info["last-delivered-id"] == last and info["pending"] == 0
    return False


def expected_latest(frame: pd.DataFrame, view: WindowedView) -> pd.DataFrame:
    """What the batch pipeline materializes: each entity's row of its newest transaction."""
    return compute_windows(view, frame).groupby(view.key).tail(1).set_index(view.key)


def assert_online_equals_batch(settings: StreamSettings, frame: pd.DataFrame) -> None:
    """Every entity's online values of each windowed view, read through Feast, equal the batch's newest row."""
    store = settings.feature_store()
    for view in declared_windowed_views().values():
        expected = expected_latest(frame, view)
        names = [f.name for f in view.features]
        online = (
            store.get_online_features(
                features=[f"{view.name}:{name}" for name in names],
                entity_rows=[{view.key: int(k)} for k in expected.index],
            )
            .to_df()
            .set_index(view.key)
        )
        for name in names:
            mismatched = (online[name].to_numpy() != expected[name].to_numpy()).sum()
            assert mismatched == 0, f"{view.name}.{name}: {mismatched} of {len(expected)} entities differ"


def test_online_values_equal_the_batch_for_every_entity_and_replays_change_nothing(
    stream_settings: StreamSettings,
) -> None:
    frame = history()
    publish_frame(stream_settings, frame)
    drain(stream_settings)
    assert_online_equals_batch(stream_settings, frame)
    client = redis.Redis.from_url(stream_settings.redis_url)
    # This project's state only: the same Redis holds other projects' (a demo, another test run).
    own_state = f"rtml:windows:*{stream_settings.feast_project}"
    state_before = {key: client.zcard(key) for key in client.scan_iter(match=own_state, count=10_000)}
    assert state_before
    # The same transactions again, some twice: a producer's retries, an operator's replay.
    publish_frame(stream_settings, pd.concat([frame, frame.sample(500, random_state=1)]))
    processors = drain(stream_settings)
    assert processors[0].processed == len(frame) + 500
    assert_online_equals_batch(stream_settings, frame)
    assert {key: client.zcard(key) for key in client.scan_iter(match=own_state, count=10_000)} == state_before
    # State holds at most each entity's horizon: the customers' 7 days, the merchants' day.
    views = declared_windowed_views()
    newest = frame["event_timestamp"].max()
    for key, size in state_before.items():
        view = views["customer_activity" if b":customer_activity:" in key else "merchant_activity"]
        assert size <= (frame["event_timestamp"] > newest - view.horizon - pd.Timedelta("20D")).sum()
    client.close()


def test_backfill_fills_the_state_and_live_transactions_then_write_exact_values(
    stream_settings: StreamSettings,
) -> None:
    """The batch pipeline's recent history arrives as backfill: it builds each entity's state without writing
    online values (the pipeline wrote those from all history); the live transactions after it do."""
    frame = history(seed=8)
    cut = frame["event_timestamp"].iloc[2_000]
    past, live = frame[frame["event_timestamp"] < cut], frame[frame["event_timestamp"] >= cut]
    recent = past[past["event_timestamp"] > cut - pd.Timedelta("7D")]
    publish_frame(stream_settings, recent, source="backfill")
    publish_frame(stream_settings, live)
    drain(stream_settings)
    client = redis.Redis.from_url(stream_settings.redis_url)
    views = declared_windowed_views()
    store = stream_settings.feature_store()
    for view in views.values():
        expected = expected_latest(frame, view)
        live_keys = set(live[view.key])
        names = [f.name for f in view.features]
        online = (
            store.get_online_features(
                features=[f"{view.name}:{n}" for n in names],
                entity_rows=[{view.key: int(k)} for k in expected.index],
            )
            .to_df()
            .set_index(view.key)
        )
        for key in expected.index:
            if key in live_keys:  # written by the processor, from backfilled state plus live events
                assert online.loc[key, names].tolist() == expected.loc[key, names].tolist(), (view.name, key)
            else:  # backfill alone writes nothing online
                assert online.loc[key, names].isna().all(), (view.name, key)
    client.close()


def test_late_and_out_of_order_events_end_where_the_batch_does(stream_settings: StreamSettings) -> None:
    frame = history(seed=2)
    shuffled = frame.sample(frac=1.0, random_state=3)
    # Mostly in order with local disorder, as concurrent producers publish; plus a block of stragglers hours late.
    blocks = [shuffled.iloc[i : i + 300].sort_values("event_timestamp") for i in range(0, len(frame), 300)]
    publish_frame(stream_settings, pd.concat(blocks))
    drain(stream_settings)
    assert_online_equals_batch(stream_settings, frame)


def test_a_batch_whose_writes_landed_in_part_counts_each_transaction_once_when_read_again(
    stream_settings: StreamSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch's writes are several Lua calls before its acknowledgement: Redis may drop the connection after
    some have run. The batch is read again, and entities whose write landed must not count it twice."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from services.packed_commands import TransactionChannel

    frame = history(seed=9)
    publish_frame(stream_settings, frame)
    send = TransactionChannel.send
    failed = 0

    async def half_then_fail(self: TransactionChannel, commands: list) -> list:
        nonlocal failed
        if failed < 2 and len(commands) >= 2:
            failed += 1
            await send(self, commands[: len(commands) // 2])
            raise RedisConnectionError("connection lost halfway through a batch's writes (test)")
        return await send(self, commands)

    monkeypatch.setattr(TransactionChannel, "send", half_then_fail)
    drain(stream_settings, write_entities=40)
    assert failed == 2
    assert_online_equals_batch(stream_settings, frame)


def test_writes_refuse_once_the_partitions_lease_is_another_processs(stream_settings: StreamSettings) -> None:
    """The writes go outside the fenced transaction that acknowledges, so each checks the lease itself."""
    from services.stream.consumer import FenceLost
    from services.stream.processor import lease_key

    publish_frame(stream_settings, history(n=400, seed=10))
    key = lease_key(stream_settings.feast_project, 0, 1)
    client = redis.Redis.from_url(stream_settings.redis_url)
    client.set(key, b"another process")

    async def run() -> None:
        from redis.asyncio import Redis

        aio = Redis.from_url(stream_settings.redis_url)
        processor = WindowProcessor(aio, WindowState(open_layouts(stream_settings), fence=(key, b"ours")))
        consumer = GroupConsumer(
            aio,
            [stream_settings.stream("transactions")],
            f"{GROUP}-0-of-1",
            processor.handle,
            dead_letter_stream=stream_settings.stream("dead-letter"),
        )
        try:
            await asyncio.wait_for(consumer.run(), timeout=30)
        finally:
            await aio.aclose()

    try:
        with pytest.raises(FenceLost, match="FENCED"):
            asyncio.run(run())
        # No state written (Feast keys, and so the state keys, end with the project's name).
        assert list(client.scan_iter(match=f"rtml:windows:*{stream_settings.feast_project}")) == []
        assert client.xpending(stream_settings.stream("transactions"), f"{GROUP}-0-of-1")["pending"] == 400
    finally:
        client.delete(key)
        client.close()


def test_two_partitions_share_the_work(stream_settings: StreamSettings) -> None:
    frame = history(seed=4)
    publish_frame(stream_settings, frame)
    processors = drain(stream_settings, partitions=2)
    assert_online_equals_batch(stream_settings, frame)
    touched = [len(p.state.cache) for p in processors]
    assert all(touched) and sum(touched) == frame["customer_id"].nunique() + frame["merchant_id"].nunique()


def test_malformed_entries_go_to_the_dead_letter_stream_and_the_rest_is_processed(
    stream_settings: StreamSettings,
) -> None:
    frame = history(n=400, seed=5)
    client = redis.Redis.from_url(stream_settings.redis_url)
    stream = stream_settings.stream("transactions")
    future = (pd.Timestamp.now(tz="UTC") + pd.Timedelta("2D")).isoformat()
    bad = {
        b"schema: 'transaction.v0'": {
            b"schema": b"transaction.v0",
            b"source": b"upstream",
            b"transaction": b"{}",
        },
        b"transaction: field missing": {b"schema": b"transaction.v1", b"source": b"upstream"},
        b"transaction: body: Invalid JSON": {
            b"schema": b"transaction.v1",
            b"source": b"upstream",
            b"transaction": b"{",
        },
        b"amount: Input should be greater than 0": {
            b"schema": b"transaction.v1",
            b"source": b"upstream",
            b"transaction": b'{"transaction_id":"x","customer_id":1,"merchant_id":1,"amount":-3,'
            b'"timestamp":"2026-09-10T00:00:00Z","channel":"online"}',
        },
        b"timestamp: Value error, is more than": {
            b"schema": b"transaction.v1",
            b"source": b"upstream",
            b"transaction": b'{"transaction_id":"y","customer_id":1,"merchant_id":1,"amount":3,'
            b'"timestamp":"' + future.encode() + b'","channel":"online"}',
        },
    }
    publish_frame(stream_settings, frame.iloc[:200])
    for fields in bad.values():
        client.execute_command(*xadd(stream, fields, 10_000_000))
    publish_frame(stream_settings, frame.iloc[200:])
    drain(stream_settings)
    assert_online_equals_batch(stream_settings, frame)
    letters = client.xrange(stream_settings.stream("dead-letter"))
    assert len(letters) == len(bad)
    for (_, fields), reason in zip(letters, bad, strict=True):
        assert reason in fields[b"reason"], fields[b"reason"]
        assert fields[b"stream"] == stream.encode() and fields[b"group"] == f"{GROUP}-0-of-1".encode()
    client.close()


def processor_process(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "services.stream.processor"],
            cwd=REPO_ROOT,
            env={**os.environ, **env, "PYTHONPATH": str(REPO_ROOT)},
            stdout=output,
            stderr=subprocess.STDOUT,
        )


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def acknowledged(url: str, settings: StreamSettings) -> int:
    client = redis.Redis.from_url(url)
    try:
        for info in client.xinfo_groups(settings.stream("transactions")):
            if info["name"].decode() == f"{GROUP}-0-of-1":
                return (info["entries-read"] or 0) - info["pending"]
        return 0
    except redis.ResponseError:
        return 0
    finally:
        client.close()


@pytest.mark.slow
def test_killed_with_sigkill_it_resumes_and_counts_each_transaction_once(
    stream_settings: StreamSettings, stream_env: dict[str, str], tmp_path: Path
) -> None:
    frame = history(n=20_000, seed=6)
    publish_frame(stream_settings, frame)
    # A lease a loaded machine does not outlast within one batch; a restarted process waits for it to expire.
    env = {**stream_env, "RTML_STREAM_LEASE_SECONDS": "3", "RTML_PROCESSOR_BATCH_SIZE": "500"}
    log = tmp_path / "processor.log"
    for kill in range(3):
        process = processor_process(env, log)
        target = (kill + 1) * len(frame) // 4
        wait_for(
            lambda t=target: acknowledged(REDIS_URL, stream_settings) >= t, 120, f"{target} acknowledged"
        )
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    process = processor_process(env, log)  # the lease of the killed one expires within 3 s
    try:
        wait_for(lambda: acknowledged(REDIS_URL, stream_settings) >= len(frame), 120, "the whole stream")
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0, log.read_text()[-3000:]
    assert_online_equals_batch(stream_settings, frame)


@pytest.mark.slow
def test_a_redis_restart_mid_stream_is_survived(
    stream_settings: StreamSettings,
    stream_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redis with its append-only file restarted while the processor works: no restart of ours, same result."""
    server = RedisServer(tmp_path, appendonly=True)
    server.start()
    try:
        monkeypatch.setenv("RTML_REDIS_URL", server.url)
        clear_settings()
        settings = get_stream_settings()
        settings.export_feast_env()
        frame = history(n=20_000, seed=7)
        publish_frame(settings, frame, server.url)
        env = {**stream_env, "RTML_REDIS_URL": server.url, "RTML_PROCESSOR_BATCH_SIZE": "500"}
        log = tmp_path / "processor.log"
        process = processor_process(env, log)
        try:
            wait_for(
                lambda: acknowledged(server.url, settings) >= len(frame) // 3, 120, "a third acknowledged"
            )
            server.kill()
            time.sleep(1.0)
            server.start()
            wait_for(lambda: acknowledged(server.url, settings) >= len(frame), 120, "the whole stream")
            assert process.poll() is None, "the processor must survive the outage without a restart"
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(20) == 0, log.read_text()[-3000:]
        assert "Redis unreachable" in log.read_text()
        assert_online_equals_batch(settings, frame)
    finally:
        server.stop()


def test_a_standby_process_takes_over_an_expired_lease(stream_settings: StreamSettings) -> None:
    """Two processes, one partition: the second waits; it gets the partition once the first is gone."""
    from services.stream.processor import acquire_partition

    async def run() -> tuple[int | None, int | None]:
        from redis.asyncio import Redis

        client = Redis.from_url(stream_settings.redis_url)
        settings = stream_settings.model_copy(update={"stream_lease_seconds": 0.5})
        stopping = asyncio.Event()
        first = await acquire_partition(client, settings, b"first", stopping)
        waiting = asyncio.create_task(acquire_partition(client, settings, b"second", stopping))
        await asyncio.sleep(0.2)
        assert not waiting.done(), "the partition is held: the second must wait"
        second = await asyncio.wait_for(waiting, 5)  # the first never renews: its lease expires
        assert first is not None and second is not None
        # The first learns it lost the partition (its commits are fenced by the same check).
        assert not await first[1].renew()
        await client.aclose()
        return first[0], second[0]

    assert asyncio.run(run()) == (0, 0)


def test_a_processor_with_another_partition_count_waits_for_the_running_ones(
    stream_settings: StreamSettings,
) -> None:
    """Two partition counts at once would give an entity two writers: the newcomer waits for the others."""
    from services.stream.processor import acquire_partition

    async def run() -> None:
        from redis.asyncio import Redis

        client = Redis.from_url(stream_settings.redis_url)
        one = stream_settings.model_copy(update={"stream_partitions": 1, "stream_lease_seconds": 0.5})
        two = stream_settings.model_copy(update={"stream_partitions": 2, "stream_lease_seconds": 0.5})
        stopping = asyncio.Event()
        held = await acquire_partition(client, one, b"old", stopping)
        assert held is not None
        newcomer = asyncio.create_task(acquire_partition(client, two, b"new", stopping))
        for _ in range(4):  # the old processor renews its lease: the newcomer keeps waiting
            await asyncio.sleep(0.2)
            assert await held[1].renew()
            assert not newcomer.done()
        await held[1].release()  # stopped: its lease is gone
        acquired = await asyncio.wait_for(newcomer, 5)
        assert acquired is not None and acquired[0] == 0
        assert await client.get(f"rtml:partitions:windows:{stream_settings.feast_project}") == b"2"
        await client.aclose()

    asyncio.run(run())


def test_a_lease_expired_during_an_outage_is_taken_again_unless_another_holds_it(
    stream_settings: StreamSettings,
) -> None:
    """After a Redis outage longer than the lease (found by the chaos suite: the processor exited instead of
    carrying on), the consumer asks to reacquire: an expired lease is taken again, a lease held by another is not."""
    from services.stream.processor import PartitionLease, lease_key

    async def run() -> None:
        from redis.asyncio import Redis

        client = Redis.from_url(stream_settings.redis_url)
        key = lease_key(stream_settings.feast_project, 0, 1)
        lease = PartitionLease(client, key, b"ours", 0.3)
        assert await lease.acquire()
        await asyncio.sleep(0.4)  # expired, as during a Redis outage
        assert not await lease.renew()
        assert await lease.renew(reacquire=True)
        assert await client.get(key) == b"ours" and await client.pttl(key) > 0
        await client.set(key, b"theirs", px=5_000)  # a spare took it first
        assert not await lease.renew(reacquire=True)
        assert await client.get(key) == b"theirs"
        await client.aclose()

    asyncio.run(run())


def test_a_processor_that_stalled_past_its_lease_takes_it_again_when_nobody_did(
    stream_settings: StreamSettings,
) -> None:
    """The soak found it: a VM snapshot froze the machine for ~10 s, the lease expired, and the processor
    exited though no other process had taken the partition. It now takes the lease again, reloads its state
    and re-reads the batch whose commit the expired lease refused: the end state is still the batch's."""
    from services.stream.processor import PartitionLease, lease_key

    frame = history(2_000, seed=5)
    publish_frame(stream_settings, frame)

    async def run() -> int:
        from redis.asyncio import Redis

        client = Redis.from_url(stream_settings.redis_url)
        lease = PartitionLease(client, lease_key(stream_settings.feast_project, 0, 1), b"ours", 0.5)
        assert await lease.acquire()
        state = WindowState(open_layouts(stream_settings), fence=(lease.key, lease.token))
        processor = WindowProcessor(client, state)
        batches = 0

        async def stalling(entries: list) -> object:
            nonlocal batches
            batches += 1
            if batches == 2:
                await asyncio.sleep(1.0)  # the loop stands still: nothing renews the lease, it expires
            return await processor.handle(entries)

        consumer = GroupConsumer(
            client,
            [stream_settings.stream("transactions")],
            f"{GROUP}-0-of-1",
            stalling,
            dead_letter_stream=stream_settings.stream("dead-letter"),
            batch_size=500,
            fence=lease,
            on_state_lost=processor.forget,
        )

        async def watch() -> None:
            while not await group_done(client, stream_settings, consumer.group):
                await asyncio.sleep(0.05)
            consumer.stop()

        await asyncio.wait_for(asyncio.gather(consumer.run(), watch()), timeout=60)
        assert await client.get(lease.key) == b"ours"
        await client.aclose()
        return consumer.stats.errors

    assert asyncio.run(run()) >= 1  # the refused commit, counted
    assert_online_equals_batch(stream_settings, frame)
