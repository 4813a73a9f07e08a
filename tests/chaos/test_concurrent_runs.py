"""Scenario 8: two feature-pipeline runs started at once, and a training set read during a run.

The second run waits for the first's data lock and says so, then finds nothing new: every transaction is in the
validated store and the offline store once. A training set read while a run writes waits for it, and equals the
one read after the run (same rows, same hash).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
from prefect import flow

from flows.feature_store.offline_store import read_partitions
from model_store.settings import REPO_ROOT, Settings, get_settings
from tests.chaos.conftest import LogLines
from tests.fixtures.pipeline import generate_small_raw


def start_pipeline(api_url: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "flows.feature_pipeline"],
            cwd=REPO_ROOT,
            env={**os.environ, "PREFECT_API_URL": api_url, "PYTHONPATH": str(REPO_ROOT)},
            stdout=output,
            stderr=subprocess.STDOUT,
        )


@flow(name="read_training_set")
def read_training_set() -> dict:
    """The training flow's dataset task on its own: its lock, its reads, its lineage."""
    from flows.training.dataset import open_feature_store
    from flows.training.params import TrainingParams
    from flows.training_pipeline import build_dataset

    settings = get_settings()
    return build_dataset(settings, open_feature_store(settings), TrainingParams()).lineage


def test_a_second_run_waits_and_a_training_set_is_never_read_mid_run(
    settings: Settings,
    prefect_harness: None,
    tmp_path: Path,
    figures: list[str],
) -> None:
    from prefect.settings import PREFECT_API_URL

    api_url = str(PREFECT_API_URL.value())
    tx = generate_small_raw(settings.raw_dir, end=pd.Timestamp.now(tz="UTC").floor("h"))
    later = tmp_path / "batch_002.parquet"
    shutil.move(settings.raw_dir / "transactions" / "batch_002.parquet", later)

    started = time.perf_counter()
    runs = [start_pipeline(api_url, tmp_path / f"run-{i}.log") for i in range(2)]
    codes = [run.wait(600) for run in runs]
    seconds = time.perf_counter() - started
    logs = [(tmp_path / f"run-{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], logs
    waited = [log for log in logs if "waits for the data lock" in log]
    assert len(waited) == 1 and "held by feature_pipeline (pid" in waited[0]

    validated = read_partitions(settings.validated_dir / "transactions", columns=["transaction_id"])
    activity = read_partitions(settings.offline_dir / "customer_activity")
    first = tx[tx["transaction_id"].isin(validated["transaction_id"])]
    figures.append(
        f"two runs at once: both exit 0 in {seconds:.1f} s; one waited for the other's lock; "
        f"{len(validated):,} validated rows ({validated['transaction_id'].nunique():,} distinct), "
        f"{len(activity):,} customer_activity rows offline"
    )
    assert validated["transaction_id"].is_unique and len(first) == len(validated)
    assert len(activity) == len(validated)
    assert not activity.duplicated(["customer_id", "event_timestamp"]).any()

    # A training set read while the next batch's run writes.
    shutil.move(later, settings.raw_dir / "transactions" / "batch_002.parquet")
    run = start_pipeline(api_url, tmp_path / "run-2.log")
    lock = settings.data_dir / ".lock"
    deadline = time.monotonic() + 120
    while "feature_pipeline" not in (lock.read_text() if lock.exists() else ""):
        assert run.poll() is None and time.monotonic() < deadline, (tmp_path / "run-2.log").read_text()
        time.sleep(0.05)
    during: dict = {}
    messages = LogLines()
    logging.getLogger("prefect.task_runs").addHandler(messages)
    try:
        # The run is paused while it holds the lock, so the read surely starts mid-run, then let go.
        run.send_signal(signal.SIGSTOP)
        reader = threading.Thread(target=lambda: during.update(read_training_set()))
        reader.start()
        deadline = time.monotonic() + 120
        while not any("training_pipeline waits for the data lock" in m for m in messages.lines):
            assert reader.is_alive() and time.monotonic() < deadline, messages.lines
            time.sleep(0.05)
        run.send_signal(signal.SIGCONT)
        assert run.wait(600) == 0, (tmp_path / "run-2.log").read_text()
        reader.join(300)
    finally:
        run.send_signal(signal.SIGCONT)
        logging.getLogger("prefect.task_runs").removeHandler(messages)
    after = read_training_set()
    figures.append(
        f"training set read during a run: waited for it, then {during['rows']} rows, "
        f"same as read after: {during['training_frame_hash'] == after['training_frame_hash']}"
    )
    assert during["training_frame_hash"] == after["training_frame_hash"]
    assert during["rows"] == after["rows"]
    validated = read_partitions(settings.validated_dir / "transactions", columns=["transaction_id"])
    assert validated["transaction_id"].is_unique and len(validated) == len(tx)
