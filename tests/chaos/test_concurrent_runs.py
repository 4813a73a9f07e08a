"""Scenario 8: two feature-pipeline runs started at once, and a training set read during a run.

The second run waits for the first's data lock and says so, then finds nothing new: every transaction is in the
validated store and the offline store once. A training set read while a run writes waits for it, and equals the
one read after the run (same rows, same hash).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path

import pandas as pd
from prefect import flow

from flows.feature_store.offline_store import read_partitions
from model_store.settings import Settings, get_settings
from tests.chaos.conftest import LogLines, start_pipeline
from tests.fixtures.pipeline import generate_small_raw


@flow(name="read_training_set")
def read_training_set() -> dict:
    """The training flow's dataset task on its own: its lock, its reads, its lineage."""
    import mlflow

    from flows.training.dataset import open_feature_store
    from flows.training.params import TrainingParams
    from flows.training_pipeline import build_dataset

    settings = get_settings()
    # Inside an MLflow run as in the training flow (it logs the set's lineage), ended here: an active run
    # left in the test process would break the next test that starts one.
    with mlflow.start_run():
        return build_dataset(settings, open_feature_store(settings), TrainingParams()).lineage


def test_a_second_run_waits_and_a_training_set_is_never_read_mid_run(
    settings: Settings, prefect_harness: None, tmp_path: Path, figures: list[str]
) -> None:
    from prefect.settings import PREFECT_API_URL

    from flows.feature_pipeline import feature_pipeline

    tx = generate_small_raw(settings.raw_dir, end=pd.Timestamp.now(tz="UTC").floor("h"))
    log = tmp_path / "first.log"
    first = start_pipeline(str(PREFECT_API_URL.value()), log)
    lock = settings.data_dir / ".lock"
    deadline = time.monotonic() + 120
    while "feature_pipeline" not in (lock.read_text() if lock.exists() else ""):
        assert first.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    # The first run is paused while it holds the lock, so the second run and the training read surely start
    # mid-run; then it goes on.
    first.send_signal(signal.SIGSTOP)
    outcomes: dict[str, dict] = {}
    messages = LogLines()
    loggers = [logging.getLogger(name) for name in ("prefect.flow_runs", "prefect.task_runs")]
    for logger in loggers:
        logger.addHandler(messages)
    try:
        second = threading.Thread(target=lambda: outcomes.update(second=feature_pipeline()))
        reader = threading.Thread(target=lambda: outcomes.update(during=read_training_set()))
        second.start()
        reader.start()
        deadline = time.monotonic() + 180
        while sum("waits for the data lock" in m for m in messages.lines) < 2:
            assert second.is_alive() and reader.is_alive() and time.monotonic() < deadline, messages.lines
            time.sleep(0.05)
        first.send_signal(signal.SIGCONT)
        assert first.wait(600) == 0, log.read_text()
        second.join(600)
        reader.join(600)
    finally:
        first.send_signal(signal.SIGCONT)
        for logger in loggers:
            logger.removeHandler(messages)
    after = read_training_set()

    waits = [m for m in messages.lines if "waits for the data lock" in m]
    validated = read_partitions(settings.validated_dir / "transactions", columns=["transaction_id"])
    activity = read_partitions(settings.offline_dir / "customer_activity")
    during = outcomes["during"]
    figures.extend(waits)
    figures.append(
        f"second run: {outcomes['second']['transactions']} new transactions; {len(validated):,} validated rows "
        f"({validated['transaction_id'].nunique():,} distinct) of {len(tx):,}; {len(activity):,} "
        "customer_activity rows offline"
    )
    figures.append(
        f"training set read during the run: {during['rows']['labeled']:,} labeled rows; the same as read after "
        f"it: {during['training_frame_hash'] == after['training_frame_hash']}"
    )
    assert any(m.startswith("feature_pipeline waits") and "held by feature_pipeline (pid" in m for m in waits)
    assert any(m.startswith("training_pipeline waits") for m in waits)
    assert outcomes["second"]["transactions"] == 0
    assert validated["transaction_id"].is_unique and len(validated) == len(tx)
    assert (
        len(activity) == len(validated) and not activity.duplicated(["customer_id", "event_timestamp"]).any()
    )
    assert during["training_frame_hash"] == after["training_frame_hash"] and during["rows"] == after["rows"]
