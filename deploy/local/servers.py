"""The platform's servers as local processes: a Prefect server with the repository deployed, and the service.

The demo and the integration tests start them the same way: on a free loopback port, logging to a file,
healthy before they are used, and stopped (process group and all) when the block ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from flows.deployments import WORK_POOL
from model_store.database_templates import prepare_template, seed_from_template
from model_store.settings import CACHE_DIR, REPO_ROOT
from model_store.tracking import mlflow_database_template, prepare_mlflow_database

BIN = Path(sys.executable).parent
# Variables that point a process at stores or a Prefect API; servers start without the caller's.
LOCATION_PREFIXES = ("PREFECT_", "RTML_", "MLFLOW_", "BENTOML_HOME", "FEAST_")


class ServerError(RuntimeError):
    """A local server that exited or never became healthy; the message ends with its log."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without store or Prefect locations, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(LOCATION_PREFIXES)}
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1", BENTOML_DO_NOT_TRACK="true")
    env.update(extra)
    return env


@contextmanager
def running(
    command: list[str],
    env: dict[str, str],
    log_path: Path,
    health_url: str,
    timeout: float,
    wait: bool = True,
) -> Iterator[Callable[[], None]]:
    """Run ``command`` in its own process group until the block ends; healthy means ``health_url`` answers 200.

    Yields the wait for health: with ``wait=False`` the block starts at once and calls it when it needs the
    process, so a slow start overlaps other work.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            command,
            env=env,
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:

            def healthy() -> None:
                _wait_healthy(proc, health_url, log_path, timeout)

            if wait:
                healthy()
            yield healthy
        finally:
            stop(proc)


def _wait_healthy(proc: subprocess.Popen, url: str, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise ServerError(
                f"{proc.args[0]} exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}"
            )
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise ServerError(f"{url} not healthy within {timeout:.0f} s:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.3)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group (servers have children), SIGKILL the whole tree of what is left after 20 s."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        proc.wait(timeout=10)


def kill_tree(pid: int, sig: signal.Signals = signal.SIGKILL) -> list[int]:
    """Send ``sig`` to a process and every descendant, as an OOM kill or a node failure would end them all.

    Its process group is not enough: BentoML's workers start sessions of their own, and a worker orphaned by a
    killed server keeps serving on the port it inherited. Returns the pids signalled.
    """
    import psutil

    try:
        root = psutil.Process(pid)
        tree = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return []
    for process in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(sig)
    return [process.pid for process in tree]


def prefect_database_template() -> Path:
    """Where the empty, migrated Prefect database of the installed Prefect version is kept."""
    from importlib.metadata import version

    return CACHE_DIR / f"prefect-{version('prefect')}.db"


def prepare_prefect_database() -> Path:
    """Migrate an empty Prefect database once per Prefect version; servers on a new home start from a copy.

    A server on an empty home runs Prefect's migrations first, more than half of its start.
    """

    def create(home: Path) -> Path:
        done = subprocess.run(
            [str(BIN / "prefect"), "server", "database", "upgrade", "--yes"],
            env=clean_env(PREFECT_HOME=str(home)),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0:
            raise ServerError(
                f"prefect server database upgrade failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
            )
        return home / "prefect.db"

    return prepare_template(prefect_database_template(), create)


def seed_prefect_database(home: Path) -> None:
    """A new home gets a copy of the prepared database, when there is one (otherwise the server migrates)."""
    seed_from_template(home / "prefect.db", prefect_database_template())


@contextmanager
def prefect_server(
    home: Path,
    scheduler: bool = True,
    timeout: float = 120,
    wait: bool = True,
    database_url: str | None = None,
    port: int | None = None,
) -> Iterator[tuple[str, Callable[[], None]]]:
    """``prefect server start`` with its own PREFECT_HOME on a free port; yields the API URL and the wait for
    its health (see ``running``): the URL is known before the server answers.

    Without ``scheduler``, cron schedules create no runs; events, automations and manual runs still work.
    ``database_url`` (a SQLAlchemy URL) replaces the SQLite file under ``home``; ``port`` (default: a free one)
    lets a server restarted on the same home answer where its clients point.
    """
    env = clean_env(PREFECT_HOME=str(home), PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED=str(scheduler).lower())
    if database_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    else:
        seed_prefect_database(home)
    port = port or free_port()
    api = f"http://127.0.0.1:{port}/api"
    command = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--analytics-off", "--no-ui"]
    with running(command, env, home / "server.log", f"{api}/health", timeout, wait=wait) as healthy:
        yield api, healthy


def prefect_cli(api: str, home: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The prefect CLI against ``api``, from the repository, without a terminal; raises with its output on failure."""
    done = subprocess.run(
        [str(BIN / "prefect"), "--no-prompt", *args],
        cwd=REPO_ROOT,
        env=clean_env(PREFECT_API_URL=api, PREFECT_HOME=str(home)),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise ServerError(f"prefect {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def deploy_all(api: str, home: Path) -> None:
    """The work pool and every deployment of prefect.yaml, as a platform team runs them."""
    prefect_cli(api, home, "work-pool", "create", WORK_POOL, "--type", "process", "--overwrite")
    prefect_cli(api, home, "deploy", "--all")


@contextmanager
def prefect_worker(
    api: str, home: Path, env: dict[str, str], wait: bool = True
) -> Iterator[Callable[[], None]]:
    """``prefect worker start`` on the work pool until the block ends: it runs every flow run that comes due.

    Yields the wait for the worker's health check (see ``running``)."""
    command = [str(BIN / "prefect"), "worker", "start", "--pool", WORK_POOL, "--with-healthcheck"]
    port = free_port()
    worker_env = {
        **clean_env(PREFECT_API_URL=api, PREFECT_HOME=str(home)),
        **env,
        "PREFECT_WORKER_WEBSERVER_HOST": "127.0.0.1",
        "PREFECT_WORKER_WEBSERVER_PORT": str(port),
        # A triggered run starts within 5 s rather than Prefect's default 10 s. Not faster: every poll is a
        # write, and SQLite locks up under frequent polls (docs/deployment.md, Production configuration).
        "PREFECT_WORKER_QUERY_SECONDS": "5",
    }
    health = f"http://127.0.0.1:{port}/health"
    with running(command, worker_env, home / "worker.log", health, timeout=120, wait=wait) as healthy:
        yield healthy


@contextmanager
def bento_service(target: str, env: dict[str, str], log_path: Path, timeout: float = 120) -> Iterator[str]:
    """``bentoml serve TARGET`` (a bento tag, or a service import path) on a free port; yields its base URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(BIN / "bentoml"), "serve", target, "--host", "127.0.0.1", "--port", str(port)]
    with running(command, {**clean_env(), **env}, log_path, f"{url}/readyz", timeout):
        yield url


def delete_project_keys(url: str, project: str) -> int:
    """Remove one Feast project's keys from Redis (Feast's and ours all end with the project name), nothing
    else; returns how many. For a project the caller owns: a test's, the demo's own."""
    import redis

    client = redis.Redis.from_url(url)
    deleted = 0
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"*{project}", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += client.delete(*batch)
                batch.clear()
        if batch:
            deleted += client.delete(*batch)
    except redis.ConnectionError:
        pass
    finally:
        client.close()
    return deleted


@contextmanager
def stream_process(
    name: str, env: dict[str, str], log_path: Path, wait: bool = True, timeout: float = 120
) -> Iterator[Callable[[], None]]:
    """``python -m services.stream.<name>`` with its health on a free port; yields the wait for its readiness
    (see ``running``)."""
    port = free_port()
    command = [sys.executable, "-m", f"services.stream.{name}"]
    process_env = {**clean_env(), **env, "RTML_STREAM_HEALTH_PORT": str(port), "PYTHONPATH": str(REPO_ROOT)}
    health = f"http://127.0.0.1:{port}/readyz"
    with running(command, process_env, log_path, health, timeout, wait=wait) as ready:
        yield ready


if __name__ == "__main__":
    # `make demo` and `make test` run this first; it returns at once when the databases are prepared.
    if not prefect_database_template().exists():
        print("==> preparing an empty Prefect database once for this Prefect version (~10 s)", flush=True)
        print(f"    {prepare_prefect_database()}")
    if not mlflow_database_template().exists():
        print("==> preparing an empty MLflow database once for this MLflow version (~3 s)", flush=True)
        print(f"    {prepare_mlflow_database()}")
