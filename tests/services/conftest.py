"""Fixtures of the service tests: a champion in a BentoML store over the pipeline's features, private Redis."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pandas as pd
import pytest
import redis

from deploy.local.servers import free_port, kill_tree
from model_store import libraries
from model_store.settings import REPO_ROOT, Settings, clear_settings, get_settings
from tests.services.champion import log_champion, sample_rows

if TYPE_CHECKING:
    from starlette.testclient import TestClient

SERVED_MODEL = "service_test_scorer"
CLUSTER_BUS_OFFSET = 10_000


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too: redis-server refuses one above 65535."""
    while True:
        port = free_port()
        if port + CLUSTER_BUS_OFFSET > 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + CLUSTER_BUS_OFFSET))
            except OSError:
                continue
        return port


def known_ids(settings: Settings) -> tuple[list[int], list[int]]:
    """Customers and merchants the feature pipeline materialized."""
    customers = pd.read_parquet(settings.validated_dir / "customers.parquet")["customer_id"]
    merchants = pd.read_parquet(settings.validated_dir / "merchants.parquet")["merchant_id"]
    return sorted(int(c) for c in customers), sorted(int(m) for m in merchants)


@pytest.fixture(scope="session")
def served_env(pipeline_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The pipeline's features with our own home: MLflow, BentoML store and profiles of a test champion."""
    from model_store.registry import load_champion
    from services.scorer.model import save_bento_model

    home = tmp_path_factory.mktemp("served") / "rtml"
    (home / "mlflow").mkdir(parents=True)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in pipeline_env.items():
            mp.setenv(key, value)
        clear_settings()
        pipeline = get_settings()
        env = {
            **pipeline_env,
            "RTML_HOME": str(home),
            "RTML_DATA_DIR": str(pipeline.data_dir),
            "RTML_FEAST_REGISTRY": str(pipeline.feast_registry),
            "RTML_MODEL_NAME": SERVED_MODEL,
            "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow' / 'mlflow.db'}",
            "BENTOML_HOME": str(home / "bentoml"),
        }
        for key, value in env.items():
            mp.setenv(key, value)
        clear_settings()
        settings = get_settings()
        for key, value in settings.feast_env().items():
            mp.setenv(key, value)
        customers, merchants = known_ids(settings)
        log_champion(settings, sample_rows(customers, merchants, 400, seed=1, now=int(time.time())))
        save_bento_model(load_champion(settings), settings)
        clear_settings()
    return env


def install_env(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, **overrides: str) -> Settings:
    """Make ``env`` (plus ``RTML_`` overrides) this process's settings and Feast environment."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key, value in overrides.items():
        monkeypatch.setenv(f"RTML_{key.upper()}", value)
    clear_settings()
    settings = get_settings()
    for key, value in settings.feast_env().items():
        monkeypatch.setenv(key, value)
    return settings


@pytest.fixture
def served_settings(served_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Settings of the served test champion on the shared Redis (the pipeline's Feast project)."""
    yield install_env(served_env, monkeypatch)
    clear_settings()


class RedisServer:
    """A redis-server of our own on a free port, which a test may stop and start again."""

    def __init__(
        self, workdir: Path, cluster: bool = False, appendonly: bool = False, password: str | None = None
    ) -> None:
        self.port = free_cluster_port() if cluster else free_port()
        self.workdir = workdir
        self.cluster = cluster
        # With its append-only file (fsync every second, Redis's default), a restart keeps what it had.
        self.appendonly = appendonly
        # With a password (requirepass), every client must authenticate, as in compose and Kubernetes.
        self.password = password
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Its URL, with the password when it has one (``redis://:password@host:port/0``)."""
        credentials = f":{self.password}@" if self.password else ""
        return f"redis://{credentials}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += [
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfilename",
            f"redis-{self.port}.aof",
        ]
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{self.port}.conf"]
        if self.password:
            args += ["--requirepass", self.password]
        log = self.workdir / f"redis-{self.port}.log"
        with log.open("w") as output:
            self.process = subprocess.Popen(args, cwd=self.workdir, stdout=output, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port, password=self.password)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"redis-server did not start on port {self.port}:\n{log.read_text()[-2000:]}"
                    ) from None
                time.sleep(0.05)
        if self.cluster:  # a one-node cluster owning every slot
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
            while b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis cluster on port {self.port} did not become ready")
                time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def kill(self) -> None:
        """SIGKILL, as an OOM kill or a node failure would: no chance to write anything more."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A running redis-server nobody else uses (stopped at the end)."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


def copy_entity_hashes(settings: Settings, target_url: str, rows: dict[str, list[int]]) -> list[bytes]:
    """Copy the Feast hashes of the given entities from the shared Redis to ``target_url``, byte for byte."""
    from feast.value_type import ValueType

    source = redis.Redis.from_url(settings.redis_url)
    target = redis.Redis.from_url(target_url)
    copied = []
    for join_key, values in rows.items():
        key_of = libraries.feast.key_encoder(settings.feast_project, [join_key], [ValueType.INT64], 3)
        for value in values:
            key = key_of([value])
            fields = source.hgetall(key)
            if fields:
                target.hset(key, mapping=fields)
                copied.append(key)
    source.close()
    target.close()
    return copied


@functools.cache
def scorer_app() -> Any:
    """The service's ASGI app, built once per process: BentoML registers its request metrics per app, and
    Prometheus refuses a second registration. Each client's lifespan still creates a fresh service instance
    from the settings of the moment."""
    from services.scorer.service import OnlineScorer

    return OnlineScorer.to_asgi()


@contextlib.contextmanager
def scorer_client(env: dict[str, str], **overrides: str) -> Iterator[TestClient]:
    """The service in-process over ASGI (lifespan included: start-up and shutdown hooks run)."""
    from starlette.testclient import TestClient

    with pytest.MonkeyPatch.context() as mp:
        install_env(env, mp, **overrides)
        with TestClient(scorer_app()) as client:
            yield client
        clear_settings()


class Server:
    """A ``bentoml serve`` process of the service, its base URL, its log and (when it has one) its own Redis."""

    def __init__(
        self, process: subprocess.Popen[bytes], url: str, redis_server: RedisServer | None, log: Path
    ) -> None:
        self.process = process
        self.url = url
        self.redis = redis_server
        self.log = log

    def wait_ready(self, seconds: float = 120.0) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"bentoml serve exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"service not ready in {seconds}s: {self.log.read_text()[-3000:]}")


@contextlib.contextmanager
def bentoml_serve(
    env: dict[str, str], workdir: Path, redis_server: RedisServer | None = None
) -> Iterator[Server]:
    """The service in a ``bentoml serve`` subprocess with ``env`` (its whole process tree killed at the end)."""
    port = free_port()
    full_env = {**os.environ, **env, "PYTHONPATH": str(REPO_ROOT), "BENTOML_DO_NOT_TRACK": "true"}
    log = workdir / "serve.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "bentoml"),
                "serve",
                "services.scorer.service:OnlineScorer",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            cwd=REPO_ROOT,
            env=full_env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    served = Server(process, f"http://127.0.0.1:{port}", redis_server, log)
    try:
        served.wait_ready()
        yield served
    finally:
        if process.poll() is None:
            kill_tree(process.pid)
            process.wait(10)


def transaction(customer: int, merchant: int, n: int = 0, **change: Any) -> dict[str, Any]:
    """A valid request body, ``n`` minutes old, with any field changed."""
    moment = datetime.now(UTC) - timedelta(minutes=n)
    return {
        "transaction_id": f"svc-{customer}-{merchant}-{n}",
        "customer_id": customer,
        "merchant_id": merchant,
        "amount": round(15.0 + 37.5 * n, 2),
        "timestamp": moment.isoformat(),
        "channel": ("chip", "contactless", "online")[n % 3],
        **change,
    }
