"""The chaos suite's stack: the real service, its stream consumers and a Redis of its own that a test may kill.

Each scenario runs short in ``make test`` and at full length in ``make chaos`` (``RTML_CHAOS=full``); both print
the scenario's figures. Tests assert outcomes (nothing lost, the right status codes), never timings.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from deploy.local.replay import wait_caught_up
from deploy.local.servers import stream_process
from model_store.settings import REPO_ROOT, Settings, clear_settings
from tests.chaos.load import ScoringLoad
from tests.services import conftest as service_fixtures
from tests.services.conftest import (
    RedisServer,
    Server,
    bentoml_serve,
    copy_entity_hashes,
    install_env,
    known_ids,
)

# The service tests' champion over the pipeline's features, as a fixture of this folder too.
served_env = service_fixtures.served_env
FULL = os.environ.get("RTML_CHAOS") == "full"


def scaled(short: float, full: float) -> float:
    """The short figure in ``make test``, the full one in ``make chaos``."""
    return full if FULL else short


class LogLines(logging.Handler):
    """The messages a logger emits, as text (add it to the logger: some set ``propagate`` off)."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def visible_parquet(root: Path) -> list[Path]:
    """Parquet files a reader finds: none of a hidden file or folder (the writers' temporary ones)."""
    return sorted(
        p
        for p in root.rglob("*.parquet")
        if not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[list[str]]:
    """Lines a scenario measured: printed under its name when it ends, captured or not.

    Through pytest's terminal reporter with capture suspended, not ``capsys``: capsys swaps ``sys.stdout`` for the
    test, and Prefect's log handlers, when a scenario's flow is the process's first, would keep writing to that
    closed stream.
    """
    lines: list[str] = []
    yield lines
    plugins = request.config.pluginmanager
    with plugins.get_plugin("capturemanager").global_and_fixture_disabled():
        plugins.get_plugin("terminalreporter").write_line(
            f"\n[chaos] {request.node.name}" + "".join(f"\n    {line}" for line in lines)
        )


@dataclass
class Stack:
    """The service on its own Redis (append-only file on), with the window processor and the traffic log."""

    settings: Settings
    env: dict[str, str]
    redis: RedisServer
    workdir: Path
    customers: list[int]
    merchants: list[int]
    # Entities copied to the Redis but never sent: their online values must survive any fault byte for byte.
    idle_keys: list[bytes]
    service: Server | None = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis.url)

    def load(self, connections: int) -> ScoringLoad:
        assert self.service is not None
        return ScoringLoad(self.service.url, connections, self.customers, self.merchants)

    def wait_caught_up(self, *groups: str, timeout: float = 60) -> None:
        """Wait until ``groups`` have read and acknowledged every entry of the transactions stream."""
        client = self.client()
        try:
            wait_caught_up(client, self.settings.stream("transactions"), groups, timeout)
        finally:
            client.close()

    def recorded_ids(self) -> set[str]:
        """Transaction ids of every decision in the decision record (the transactions stream)."""
        import json

        client = self.client()
        try:
            entries = client.xrange(self.settings.stream("transactions"))
        finally:
            client.close()
        return {json.loads(fields[b"transaction"])["transaction_id"] for _, fields in entries}

    def logged_ids(self) -> set[str]:
        """Transaction ids of the prediction log the traffic log wrote."""
        from datetime import UTC, datetime, timedelta

        from model_store.profiles import ProfileStore

        store = ProfileStore(self.settings.profile_store, self.settings.model_name)
        now = datetime.now(UTC)
        return set(
            store.read_predictions(now - timedelta(hours=2), now + timedelta(hours=1))["transaction_id"]
        )

    def idle_values(self) -> dict[bytes, dict[bytes, bytes]]:
        client = self.client()
        try:
            return {key: client.hgetall(key) for key in self.idle_keys}
        finally:
            client.close()


@pytest.fixture
def stack(served_env: dict[str, str], tmp_path: Path) -> Iterator[Stack]:
    """The service, window processor and traffic log on a private persistent Redis, torn down at the end."""
    redis_server = RedisServer(tmp_path, appendonly=True)
    redis_server.start()
    with pytest.MonkeyPatch.context() as mp:
        settings = install_env(served_env, mp)
        customers, merchants = known_ids(settings)
        loaded_customers, loaded_merchants = customers[:20], merchants[:10]
        idle = {"customer_id": customers[20:25], "merchant_id": merchants[10:13]}
        copy_entity_hashes(
            settings, redis_server.url, {"customer_id": loaded_customers, "merchant_id": loaded_merchants}
        )
        idle_keys = copy_entity_hashes(settings, redis_server.url, idle)
        env = {
            **served_env,
            "RTML_REDIS_URL": redis_server.url,
            # The traffic log writes its prediction log every second instead of every five minutes.
            "RTML_TRAFFIC_FLUSH_SECONDS": "1",
            "RTML_STREAM_LEASE_SECONDS": "2",
        }
        built = Stack(
            install_env(env, mp),
            env,
            redis_server,
            tmp_path,
            loaded_customers,
            loaded_merchants,
            idle_keys,
        )
        try:
            with contextlib.ExitStack() as processes:
                waits = [
                    processes.enter_context(stream_process(name, env, tmp_path / f"{name}.log", wait=False))
                    for name in ("processor", "traffic")
                ]
                built.service = processes.enter_context(bentoml_serve(env, tmp_path, redis_server))
                for wait in waits:
                    wait()
                yield built
        finally:
            redis_server.stop()
    clear_settings()


def start_pipeline(api: str, log: Path) -> subprocess.Popen[bytes]:
    """A feature-pipeline run in a process of its own (one that can be killed), on the Prefect API at ``api``."""
    with log.open("ab") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "flows.feature_pipeline"],
            cwd=REPO_ROOT,
            env={**os.environ, "PREFECT_API_URL": api, "PYTHONPATH": str(REPO_ROOT)},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
