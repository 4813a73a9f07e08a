"""Scenario 5: the Prefect server SIGKILLed while a feature-pipeline run reports to it, restarted on its database.

The run either completes or ends marked crashed, and the next run completes with no duplicated data.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pandas as pd
import psutil

from deploy.local.servers import free_port, kill_tree, prefect_server
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
    validated = read_partitions(settings.validated_dir / "transactions", columns=["transaction_id"])
    activity = read_partitions(settings.offline_dir / "customer_activity")
    figures.append(
        f"server SIGKILLed ({len(killed)} processes) mid-run, down {down:.0f} s, restarted on its database: "
        f"the run's process exited {code}, its state {states[-1] if states else None}"
    )
    figures.append(
        f"next run: {final[-1]}; {len(validated):,} validated rows ({validated['transaction_id'].nunique():,} "
        f"distinct) of {len(tx):,}; {len(activity):,} customer_activity rows offline"
    )
    assert states and states[0] in ("COMPLETED", "CRASHED", "FAILED"), states
    assert final[-1] == "COMPLETED"
    assert validated["transaction_id"].is_unique and len(validated) == len(tx)
    assert (
        len(activity) == len(validated) and not activity.duplicated(["customer_id", "event_timestamp"]).any()
    )
