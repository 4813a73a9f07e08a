"""The demo's bootstrap (Redis when it answers, otherwise Feast's embedded SQLite store, said loudly), its data's
end, and its wait for the worker's flow-run processes before stopping the worker."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from deploy.local.demo import counting_trials, data_end, ensure_online_store, wait_for_run_processes
from deploy.local.steps import Steps
from model_store.settings import Settings, clear_settings, get_settings


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_uses_redis_when_it_answers(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with Steps(1, tmp_path / "demo.log") as steps:
        assert ensure_online_store(settings, steps).online_store == "redis"
    assert "online store: Redis" in capsys.readouterr().out


def test_falls_back_to_sqlite_and_says_so(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RTML_REDIS_URL", f"redis://127.0.0.1:{_closed_port()}/0")
    # setenv records the variable's absence, so teardown removes what the demo exports (delenv of an
    # absent variable records nothing, and the demo's sqlite choice would leak into every later test).
    monkeypatch.setenv("RTML_ONLINE_STORE", "redis")
    clear_settings()
    with Steps(1, tmp_path / "demo.log") as steps:
        chosen = ensure_online_store(get_settings(), steps)
    assert chosen.online_store == "sqlite"
    assert chosen.feast_yaml.name == "feature_store_sqlite.yaml"
    out = capsys.readouterr().out
    assert "falling back to Feast's embedded SQLite online store" in out


def test_refused_credentials_stop_the_demo_without_showing_the_password(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.services.conftest import RedisServer

    server = RedisServer(tmp_path, password="demo-right-5a1f")
    server.start()
    try:
        monkeypatch.setenv("RTML_REDIS_URL", f"redis://:demo-wrong-77c2@127.0.0.1:{server.port}/0")
        clear_settings()
        with (
            Steps(1, tmp_path / "demo.log") as steps,
            pytest.raises(RuntimeError, match="refused") as refused,
        ):
            ensure_online_store(get_settings(), steps)
        assert "demo-wrong-77c2" not in str(refused.value) and ":***@" in str(refused.value)
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("now", "end"),
    [
        ("2026-12-02T09:44:00+00:00", "2026-11-30T00:00:00+00:00"),  # a Wednesday: that week's Monday
        ("2026-11-30T00:00:00+00:00", "2026-11-30T00:00:00+00:00"),  # Monday midnight itself
        ("2026-11-29T23:59:59+00:00", "2026-11-23T00:00:00+00:00"),  # Sunday night: the week before
        ("2026-12-01T01:30:00+05:00", "2026-11-30T00:00:00+00:00"),  # Tuesday there, Monday 20:30 UTC
    ],
)
def test_data_ends_on_the_last_monday_midnight_utc(now: str, end: str) -> None:
    assert data_end(pd.Timestamp(now)) == pd.Timestamp(end)


def test_waits_for_a_finished_runs_process_to_exit_before_the_worker_stops() -> None:
    run = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1)"])
    # The worker reaps its flow runs' processes; here a thread does.
    threading.Thread(target=run.wait, daemon=True).start()
    cancelled_before_start = SimpleNamespace(infrastructure_pid=None)
    wait_for_run_processes([cancelled_before_start, SimpleNamespace(infrastructure_pid=str(run.pid))])
    assert run.poll() is not None


def test_the_training_bar_counts_the_trials_the_tuning_logs() -> None:
    """The demo follows training by the tuning's one log line per trial (in-process, or read from the API)."""
    from flows.training.tuning import TrialOutcome, create_study, search

    class Counted:
        trials = 0

        def advance(self, amount: float = 1) -> None:
            self.trials += int(amount)

    def evaluate(batch: list) -> list[TrialOutcome]:
        return [TrialOutcome(trial.number, params, value=0.5) for trial, params in batch]

    bar = Counted()
    with counting_trials(bar):  # type: ignore[arg-type]
        search(create_study(0), evaluate, n_trials=3, timeout_seconds=60, parallelism=2)
    assert bar.trials == 3
