"""Scored rows reach the profile store in hourly windows, off the request path, and none are lost."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model_store.profiles import ProfileStore
from services.scorer.traffic_log import ScoredBatch, TrafficLog

# Profiled as the processes that profile do: with whylogs' patches (model_store.libraries.whylogs).
pytestmark = pytest.mark.usefixtures("whylogs_patches")

T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)


FEATURES = ["amount", "channel"]


def model_input(columns: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
    """Stands in for the model's preparation: numbers as floats, a default for the null category."""
    return {
        "amount": np.array(columns["amount"], dtype=np.float64),
        "channel": [c or "__missing__" for c in columns["channel"]],
    }


def batch(start: int, n: int, at: datetime, version: str = "3") -> ScoredBatch:
    return ScoredBatch(
        columns={
            "amount": [float(10 + i) for i in range(n)],
            "channel": [None if i % 4 == 0 else "chip" for i in range(n)],
        },
        scores=[i / (n + 1) for i in range(n)],
        decisions=["decline" if i % 2 else "approve" for i in range(n)],
        request_ids=[f"t{start + i}" for i in range(n)],
        event_times=[(at + timedelta(seconds=i)).timestamp() for i in range(n)],
        model_version=version,
    )


def wait_for(condition: Any, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def test_rows_are_profiled_and_logged_by_the_hour_of_their_event(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path, "m")
    log = TrafficLog(store, FEATURES, model_input, flush_seconds=3600)
    log.record(batch(0, 30, T0 + timedelta(minutes=10)))
    log.record(batch(30, 20, T0 + timedelta(minutes=70)))
    assert log.pending_rows == 50
    assert log.flush() == 50
    assert log.pending_rows == 0

    first = store.read_window(T0, T0 + timedelta(hours=1))
    second = store.read_window(T0 + timedelta(hours=1), T0 + timedelta(hours=2))
    assert first is not None and second is not None
    assert first.get_column("amount").to_summary_dict()["counts/n"] == 30
    assert second.get_column("score").to_summary_dict()["counts/n"] == 20
    assert set(first.get_columns()) == {"amount", "channel", "score"}
    predictions = store.read_predictions(T0, T0 + timedelta(hours=2)).sort_values("transaction_id")
    assert len(predictions) == 50
    assert set(predictions["transaction_id"]) == {f"t{i}" for i in range(50)}
    assert set(predictions["decision"]) == {"approve", "decline"}
    assert (predictions["model_version"] == "3").all()


def test_background_thread_drains_once_enough_rows_wait(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path, "m")
    log = TrafficLog(
        store, FEATURES, model_input, flush_seconds=3600, ship_seconds=3600, ship_rows=100, flush_rows=100
    )
    log.start()
    try:
        log.record(batch(0, 60, T0))
        assert log.written_rows == 0  # below the threshold, and the timer is an hour away
        log.record(batch(60, 60, T0))
        wait_for(lambda: log.written_rows == 120)
        assert len(store.read_predictions(T0, T0 + timedelta(hours=1))) == 120
    finally:
        log.close()


def test_close_writes_what_is_still_buffered(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path, "m")
    log = TrafficLog(store, FEATURES, model_input, ship_seconds=3600, flush_seconds=3600)
    log.start()
    log.record(batch(0, 7, T0))
    log.close()
    assert len(store.read_predictions(T0, T0 + timedelta(hours=1))) == 7


class FlakyStore(ProfileStore):
    """A profile store whose disk is full until ``fixed`` (profiles, or only prediction logs)."""

    fixed = False
    profiles_fail = True

    def write_window(self, view: Any, window_start: datetime) -> Path:
        if not self.fixed and self.profiles_fail:
            raise OSError("No space left on device")
        return super().write_window(view, window_start)

    def write_predictions(self, predictions: Any, window_start: datetime) -> Path:
        if not self.fixed:
            raise OSError("No space left on device")
        return super().write_predictions(predictions, window_start)


def test_failed_writes_keep_their_rows_and_bounded_memory_drops_the_oldest(tmp_path: Path) -> None:
    store = FlakyStore(tmp_path, "m")
    log = TrafficLog(store, FEATURES, model_input, flush_seconds=3600, max_rows=25)
    log.record(batch(0, 10, T0))
    log.record(batch(10, 10, T0))
    with pytest.raises(OSError, match="No space"):
        log.flush()
    assert log.pending_rows == 20 and log.dropped_rows == 0
    log.record(batch(20, 10, T0))
    with pytest.raises(OSError):
        log.flush()
    assert log.pending_rows == 10 and log.dropped_rows == 20  # the oldest window made room
    store.fixed = True
    assert log.flush() == 10
    logged = store.read_predictions(T0, T0 + timedelta(hours=1))
    assert sorted(logged["transaction_id"]) == sorted(f"t{i}" for i in range(20, 30))


def test_a_retry_after_a_partial_write_does_not_duplicate_rows(tmp_path: Path) -> None:
    store = FlakyStore(tmp_path, "m")
    store.profiles_fail = False  # the profile lands, its prediction log does not
    log = TrafficLog(store, FEATURES, model_input, flush_seconds=3600)
    log.record(batch(0, 12, T0))
    with pytest.raises(OSError):
        log.flush()
    store.fixed = True
    assert log.flush() == 12
    assert len(list(store.serving_dir.rglob("*.bin"))) == 1
    profile = store.read_window(T0, T0 + timedelta(hours=1))
    assert profile is not None and profile.get_column("score").to_summary_dict()["counts/n"] == 12
    assert len(store.read_predictions(T0, T0 + timedelta(hours=1))) == 12


def test_a_writer_process_writes_the_same_files(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path, "m")
    log = TrafficLog(store, FEATURES, model_input, ship_seconds=3600, flush_seconds=3600, writer_process=True)
    log.start()
    log.record(batch(0, 40, T0 + timedelta(minutes=5)))
    log.record(batch(40, 10, T0 + timedelta(minutes=65)))
    assert log.flush() == 50
    log.record(batch(50, 5, T0))
    log.close()  # writes the rest, then stops the writer process
    assert len(store.read_predictions(T0, T0 + timedelta(hours=2))) == 55
    profile = store.read_window(T0, T0 + timedelta(hours=1))
    assert profile is not None and profile.get_column("amount").to_summary_dict()["counts/n"] == 45


def test_a_dead_writer_process_is_replaced_without_losing_queued_rows(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path, "m")
    log = TrafficLog(store, FEATURES, model_input, ship_seconds=3600, flush_seconds=3600, writer_process=True)
    log.start()
    log.record(batch(0, 10, T0))
    assert log.flush() == 10
    first = log._process
    assert first is not None
    first.kill()  # the writer dies (OOM-killed, say)
    first.join(10)
    log.record(batch(10, 8, T0))
    assert log.flush() == 8  # shipped to a new writer
    assert log._process is not None and log._process.pid != first.pid
    log.close()
    logged = store.read_predictions(T0, T0 + timedelta(hours=1))
    assert sorted(logged["transaction_id"]) == sorted(f"t{i}" for i in range(18))


def test_the_servers_stop_signal_to_the_writer_loses_no_shipped_rows(tmp_path: Path) -> None:
    """BentoML's arbiter sends its stop signal to a worker's children too, before the worker's shutdown hook."""
    import os
    import signal

    store = ProfileStore(tmp_path, "m")
    log = TrafficLog(store, FEATURES, model_input, ship_seconds=3600, flush_seconds=3600, writer_process=True)
    log.start()
    log.record(batch(0, 2, T0))
    assert log.flush() == 2  # the writer is up and in its loop
    log.record(batch(2, 10, T0))
    assert log.ship() == 10  # in the writer, not yet written
    writer = log._process
    assert writer is not None and writer.pid is not None
    os.kill(writer.pid, signal.SIGTERM)
    os.kill(writer.pid, signal.SIGINT)
    log.record(batch(12, 3, T0))
    log.close()
    assert log._process is None
    assert writer.exitcode == 0  # it left on "stop", not on the signals
    logged = store.read_predictions(T0, T0 + timedelta(hours=1))
    assert sorted(logged["transaction_id"]) == sorted(f"t{i}" for i in range(15))


def test_a_failed_shipment_keeps_its_rows_ahead_of_later_ones(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path, "m")
    calls = {"n": 0}

    def failing_once(columns: Any) -> dict[str, Any]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise MemoryError("no room to convert")
        return model_input(columns)

    log = TrafficLog(store, FEATURES, failing_once, flush_seconds=3600)
    log.record(batch(0, 3, T0))
    with pytest.raises(MemoryError):
        log.ship()
    assert log.pending_rows == 3
    log.record(batch(3, 2, T0))
    assert log.ship() == 5
    assert log.flush() == 5 and log.pending_rows == 0
    logged = store.read_predictions(T0, T0 + timedelta(hours=1))
    assert list(logged["transaction_id"]) == [f"t{i}" for i in range(5)]
    assert list(logged["score"]) == pytest.approx([0, 0.25, 0.5, 0, 1 / 3])
