"""Redis that requires a password, as in compose and Kubernetes: the service's feature reader, its decision
publisher, Feast's own client and a stream process authenticate with the password carried by RTML_REDIS_URL,
and no log line or error message of a failed connection shows it."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import redis

from model_store.settings import Settings, clear_settings, redacted_url
from services.scorer.online_features import OnlineStoreUnavailable, RedisFeatureReader, open_feature_reader
from services.scorer.scoring import DecisionPublisher
from services.stream.consumer import Effects, Entry
from services.stream.runner import Role, run
from services.stream.settings import StreamSettings, get_stream_settings
from tests.conftest import unique_project
from tests.services.conftest import RedisServer, copy_entity_hashes, install_env, known_ids, transaction

PASSWORD = "pw-3b8e61d0c2"
WRONG_PASSWORD = "pw-wrong-94a7f5"


@pytest.fixture
def secured_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of our own started with ``--requirepass``."""
    server = RedisServer(tmp_path, password=PASSWORD)
    server.start()
    yield server
    server.stop()


def url_with(server: RedisServer, password: str | None) -> str:
    credentials = f":{password}@" if password else ""
    return f"redis://{credentials}127.0.0.1:{server.port}/0"


def rows_for(customers: list[int], merchants: list[int]) -> tuple[dict[str, list], list[float]]:
    now = int(time.time())
    rows = {
        "customer_id": customers,
        "merchant_id": merchants,
        "amount": [12.5 + 40 * i for i in range(len(customers))],
        "channel": ["online"] * len(customers),
        "transaction_unix": [now] * len(customers),
    }
    return rows, [float(now)] * len(customers)


def stream_settings_for(url: str, home: Path, monkeypatch: pytest.MonkeyPatch) -> StreamSettings:
    for key, value in {
        "RTML_HOME": str(home),
        "RTML_REDIS_URL": url,
        "RTML_FEAST_PROJECT": unique_project("auth"),
        "RTML_STREAM_HEALTH_PORT": "0",
    }.items():
        monkeypatch.setenv(key, value)
    clear_settings()
    return get_stream_settings()


def consume(settings: StreamSettings, stop_after: float | None = None, expect: int = 0) -> list[Entry]:
    """Run a stream process (``services.stream.runner.run``, which opens its client from the settings' URL)
    with a handler that records what it reads; it stops (SIGTERM, as Kubernetes stops it) once ``expect``
    entries were read, or after ``stop_after`` seconds."""
    seen: list[Entry] = []

    def terminate() -> None:
        os.kill(os.getpid(), signal.SIGTERM)

    async def handle(entries: list[Entry]) -> Effects:
        seen.extend(entries)
        if expect and len(seen) >= expect:
            terminate()
        return Effects()

    async def make_role(settings: StreamSettings, client: object, stopping: asyncio.Event) -> Role:
        if stop_after is not None:
            asyncio.get_running_loop().call_later(stop_after, terminate)
        return Role(
            name="auth-test", group="auth-test", streams=[settings.stream("transactions")], handler=handle
        )

    asyncio.run(asyncio.wait_for(run(settings, make_role), 60))
    return seen


async def failed_read(
    reader: RedisFeatureReader, rows: dict[str, list], event_times: list[float]
) -> tuple[bool, str]:
    """Readiness and the message a read fails with (the 503's), when Redis refuses or is gone."""
    try:
        with pytest.raises(OnlineStoreUnavailable) as unavailable:
            await reader.read(rows, event_times)
        return await reader.ping(), str(unavailable.value)
    finally:
        await reader.close()


def test_without_the_password_the_server_refuses_every_command(secured_redis: RedisServer) -> None:
    """The fixture really requires authentication: the tests below would prove nothing otherwise."""
    client = redis.Redis.from_url(url_with(secured_redis, None))
    with pytest.raises(redis.AuthenticationError):
        client.ping()
    client.close()
    assert redis.Redis.from_url(secured_redis.url).ping()


def test_feature_reader_decision_publisher_and_feast_authenticate_with_the_url(
    served_env: dict[str, str], secured_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = install_env(served_env, monkeypatch)
    customers, merchants = known_ids(shared)
    copy_entity_hashes(
        shared, secured_redis.url, {"customer_id": customers[:3], "merchant_id": merchants[:3]}
    )
    settings = install_env(served_env, monkeypatch, redis_url=secured_redis.url)
    assert f'password="{PASSWORD}"' in settings.redis_connection_string
    rows, event_times = rows_for(customers[:3], merchants[:3])

    # Feast's own client (the SDK's reads, apply and the materialization writes use it) on the same string.
    store = settings.feature_store()
    expected = store.get_online_features(
        features=store.get_feature_service(settings.feature_service), entity_rows=rows
    ).to_dict()
    assert all(value is not None for value in expected["home_region"])

    reader = open_feature_reader(settings, settings.feature_service)
    assert isinstance(reader, RedisFeatureReader)
    publisher = DecisionPublisher(reader.client, settings.stream("transactions"), 1_000)
    record = {b"schema": b"transaction.v1", b"source": b"scorer", b"transaction": b"{}"}

    async def exercise() -> tuple[bool, dict[str, list]]:
        try:
            ready = await reader.ping()
            features = await reader.read(rows, event_times)
            await publisher.publish([record, record])
            return ready, features.columns
        finally:
            await reader.close()

    ready, columns = asyncio.run(exercise())
    assert ready
    for name in ("home_region", "txn_count_24h", "merchant_category"):
        assert columns[name] == expected[name], name
    client = redis.Redis.from_url(secured_redis.url)
    assert client.xlen(settings.stream("transactions")) == 2
    client.close()


def test_a_stream_process_and_the_publish_command_authenticate_with_the_url(
    secured_redis: RedisServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from services.stream import publish

    settings = stream_settings_for(secured_redis.url, tmp_path / "rtml", monkeypatch)
    source = tmp_path / "tx.csv"
    pd.DataFrame([transaction(1, 2, n) for n in range(3)]).to_csv(source, index=False)
    assert publish.main([str(source)]) == 0, capsys.readouterr().err
    seen = consume(settings, expect=3)
    assert len(seen) == 3
    client = redis.Redis.from_url(secured_redis.url)
    (group,) = client.xinfo_groups(settings.stream("transactions"))
    assert group["entries-read"] == 3 and group["pending"] == 0  # read and acknowledged
    client.close()


def test_no_log_line_or_error_message_of_a_failed_connection_shows_the_password(
    served_env: dict[str, str],
    secured_redis: RedisServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A wrong password (Redis refuses it) and a Redis that is gone, through every path that reports them."""
    from services.stream import publish

    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    refused = url_with(secured_redis, WRONG_PASSWORD)
    gone = RedisServer(tmp_path)  # a free port with no server behind it
    gone.password = WRONG_PASSWORD
    for url in (refused, gone.url):
        # The stream process: it logs each failure with its reason and backs off.
        settings = stream_settings_for(url, tmp_path / "rtml", monkeypatch)
        assert consume(settings, stop_after=1.5) == []
        seen.append(repr(settings))
        # The publish command: one line on stderr naming the Redis it could not reach.
        source = tmp_path / "tx.csv"
        pd.DataFrame([transaction(1, 2)]).to_csv(source, index=False)
        assert publish.main([str(source)]) == 2
        err = capsys.readouterr().err
        assert redacted_url(url) in err
        seen.append(err)
        # The service's reader (Feast's connection string): 503's message and the readiness warning.
        service_settings: Settings = install_env(served_env, monkeypatch, redis_url=url)
        reader = open_feature_reader(service_settings, service_settings.feature_service)
        rows, event_times = rows_for([1], [1])
        ready, message = asyncio.run(failed_read(reader, rows, event_times))
        assert not ready
        seen.append(message)
        if url == refused:  # Feast's SDK on the same connection string (it retries a refused port for ~10 s)
            store = service_settings.feature_store()
            with pytest.raises(redis.AuthenticationError) as feast_error:
                store.get_online_features(
                    features=store.get_feature_service(service_settings.feature_service), entity_rows=rows
                )
            seen.append(str(feast_error.value))
    assert any("Redis unreachable" in r.getMessage() for r in caplog.records)
    assert any("invalid username-password pair" in text for text in seen)
    everything = "\n".join([*seen, caplog.text])
    for secret in (PASSWORD, WRONG_PASSWORD):
        assert secret not in everything


def test_a_password_feast_cannot_carry_is_refused_without_showing_it() -> None:
    settings = Settings(redis_url="redis://:not,this-one@redis:6379/0")
    with pytest.raises(ValueError, match="openssl rand -hex 32") as refused:
        _ = settings.redis_connection_string
    assert "not,this-one" not in str(refused.value) and "redis://:***@redis:6379/0" in str(refused.value)
