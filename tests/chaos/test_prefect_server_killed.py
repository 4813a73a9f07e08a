"""Scenario 5: the Prefect server SIGKILLed while a feature-pipeline run reports to it, restarted on its database.

The run either completes or ends marked crashed, and the next run completes with no duplicated data: for a run
started as a process of its own, and for a deployment's run that a long-running worker took, where the same
worker (not a restarted one) reconnects and takes the next run.
"""

from __future__ import annotations

import os
import re
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import pandas as pd
import psutil

from deploy.local.servers import free_port, kill_tree, prefect_cli, prefect_server, prefect_worker
from flows.deployments import FEATURE_PIPELINE, WORK_POOL
from flows.feature_store.offline_store import read_partitions
from model_store.settings import Settings
from tests.chaos.conftest import scaled, start_pipeline
from tests.fixtures.pipeline import generate_small_raw


def server_pid(port: int) -> int:
    """The ``prefect server start`` process serving ``port`` (a child of this process)."""
    for child in psutil.Process().children(recursive=True):
        if "server" in child.cmdline() and str(port) in child.cmdline():
            return child.pid
    raise LookupError(f"no prefect server on port {port}")


def run_states(api: str) -> list[str]:
    runs = httpx.post(f"{api}/flow_runs/filter", json={"sort": "START_TIME_ASC"}, timeout=30).json()
    return [run["state"]["type"] for run in runs if run["flow_id"]]


def test_a_killed_prefect_server_leaves_the_run_done_or_crashed_and_the_next_run_whole(
    settings: Settings, tmp_path: Path, figures: list[str]
) -> None:
    tx = generate_small_raw(settings.raw_dir, end=pd.Timestamp.now(tz="UTC").floor("h"))
    home, port, log = tmp_path / "prefect", free_port(), tmp_path / "runs.log"
    down = scaled(3, 20)
    with prefect_server(home, scheduler=False, port=port) as (api, _):
        run = start_pipeline(api, log)
        lock = settings.data_dir / ".lock"
        deadline = time.monotonic() + 180
        while "feature_pipeline" not in (lock.read_text() if lock.exists() else ""):
            assert run.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        killed = kill_tree(server_pid(port))
    time.sleep(down)
    with prefect_server(home, scheduler=False, port=port) as (api, _):
        code = run.wait(600)
        states = run_states(api)
        again = start_pipeline(api, log)
        assert again.wait(600) == 0, log.read_text()[-5000:]
        final = run_states(api)
    figures.append(
        f"server SIGKILLed ({len(killed)} processes) mid-run, down {down:.0f} s, restarted on its database: "
        f"the run's process exited {code}, its state {states[-1] if states else None}"
    )
    assert states and states[0] in ("COMPLETED", "CRASHED", "FAILED"), states
    assert final[-1] == "COMPLETED"
    assert_whole_once(settings, tx, figures)


def test_a_worker_reconnects_to_a_restarted_server_and_takes_the_next_run(
    settings: Settings, tmp_path: Path, figures: list[str]
) -> None:
    tx = generate_small_raw(settings.raw_dir, end=pd.Timestamp.now(tz="UTC").floor("h"))
    home, port = tmp_path / "prefect", free_port()
    down = scaled(3, 20)
    # The worker knows the test's stores from its environment; its flow runs inherit it.
    stores = {
        k: v for k, v in os.environ.items() if k.startswith(("RTML_", "MLFLOW_", "BENTOML_HOME", "FEAST_"))
    }
    with ExitStack() as worker_scope:
        with prefect_server(home, scheduler=False, port=port) as (api, _):
            prefect_cli(api, home, "work-pool", "create", WORK_POOL, "--type", "process")
            prefect_cli(api, home, "deploy", "--name", FEATURE_PIPELINE.split("/")[1])
            worker_scope.enter_context(prefect_worker(api, home, stores))
            worker = worker_pid(home)
            first = run_deployment(api, home)
            wait_running(api, first, settings.data_dir / ".lock", home / "worker.log")
            killed = kill_tree(server_pid(port))
        time.sleep(down)
        with prefect_server(home, scheduler=False, port=port) as (api, _):
            first_state = final_state(api, first, home / "worker.log")
            second = run_deployment(api, home)
            second_state = final_state(api, second, home / "worker.log")
            reconnected = psutil.pid_exists(worker) and worker_pid(home) == worker
    figures.append(
        f"server SIGKILLed ({len(killed)} processes) while the worker's run computed features, down "
        f"{down:.0f} s, restarted on its database: that run ended {first_state}"
    )
    figures.append(f"the same worker process took the next run: {reconnected}; it ended {second_state}")
    assert first_state in ("COMPLETED", "CRASHED", "FAILED")
    assert reconnected and second_state == "COMPLETED", (home / "worker.log").read_text()[-5000:]
    assert_whole_once(settings, tx, figures)


def worker_pid(home: Path) -> int:
    """The ``prefect worker start`` process using ``home`` (a child of this process)."""
    for child in psutil.Process().children(recursive=True):
        command = child.cmdline()
        if "worker" in command and "start" in command and child.environ().get("PREFECT_HOME") == str(home):
            return child.pid
    raise LookupError(f"no prefect worker with PREFECT_HOME={home}")


def run_deployment(api: str, home: Path) -> str:
    """A run of the feature-pipeline deployment, due now; returns its id."""
    created = prefect_cli(api, home, "deployment", "run", FEATURE_PIPELINE)
    found = re.search(r"UUID: ([0-9a-f-]{36})", created.stdout)
    assert found, created.stdout
    return found.group(1)


def wait_running(api: str, run_id: str, lock: Path, log: Path, timeout: float = 180) -> None:
    """Until the run the worker took holds the data lock (it is computing, not starting)."""
    deadline = time.monotonic() + timeout
    while "feature_pipeline" not in (lock.read_text() if lock.exists() else ""):
        state = httpx.get(f"{api}/flow_runs/{run_id}", timeout=10).json()["state_type"]
        assert state in ("SCHEDULED", "PENDING", "RUNNING") and time.monotonic() < deadline, (
            f"{state}: {log.read_text()[-5000:]}"
        )
        time.sleep(0.05)


def final_state(api: str, run_id: str, log: Path, timeout: float = 300) -> str:
    """The run's state once it is final (the server answers 503 while SQLite is busy: asked again)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = httpx.get(f"{api}/flow_runs/{run_id}", timeout=10)
        if response.status_code == 200 and response.json()["state_type"] in FINAL:
            return response.json()["state_type"]
        time.sleep(0.5)
    raise AssertionError(f"flow run {run_id} not final within {timeout:.0f} s:\n{log.read_text()[-5000:]}")


FINAL = ("COMPLETED", "CRASHED", "FAILED", "CANCELLED")


def assert_whole_once(settings: Settings, tx: pd.DataFrame, figures: list[str]) -> None:
    """Every generated transaction validated once, and one offline row per validated transaction."""
    validated = read_partitions(settings.validated_dir / "transactions", columns=["transaction_id"])
    activity = read_partitions(settings.offline_dir / "customer_activity")
    figures.append(
        f"afterwards: {len(validated):,} validated rows ({validated['transaction_id'].nunique():,} distinct) of "
        f"{len(tx):,}; {len(activity):,} customer_activity rows offline"
    )
    assert validated["transaction_id"].is_unique and len(validated) == len(tx)
    assert (
        len(activity) == len(validated) and not activity.duplicated(["customer_id", "event_timestamp"]).any()
    )
