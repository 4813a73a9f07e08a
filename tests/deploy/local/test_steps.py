"""The terminal of a long command: steps, results and errors there; logs, warnings and prints in the log file."""

from __future__ import annotations

import logging
import sys
import threading
import warnings
from pathlib import Path

import pytest

from deploy.local.steps import Steps


def test_steps_and_results_on_the_terminal_everything_else_in_the_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from prefect.logging.configuration import ensure_logging_setup

    ensure_logging_setup()  # Prefect's console handlers exist before the block: they write to the log too
    log_path = tmp_path / "home" / "demo.log"
    root_handlers = logging.getLogger().handlers[:]
    with Steps(total=2, log_path=log_path) as steps:
        steps.result("state in /somewhere")
        steps.step("Generate data")
        # As Prefect's task run logger sends it: with the run's name.
        run_logger = logging.getLogger("prefect.task_runs")
        run_logger.info("Finished in state Completed()", extra={"task_run_name": "ingest-1a2"})
        logging.getLogger("flows.feature_store.validation").info("Batch b1: 9 valid, 1 quarantined")
        logging.getLogger("some.library").warning("a library warning")
        logging.getLogger("some.library").info("a library's chatter")
        warnings.warn("old_api() is deprecated", DeprecationWarning, stacklevel=1)
        print("Successfully registered model 'fraud_scorer'.")
        print("an error line a library prints", file=sys.stderr)
        steps.result("40,000 transactions")
        steps.step("Score them")
        with steps.progress("requests", total=100, unit="requests") as bar:
            sender = threading.Thread(target=lambda: [bar.advance(10) for _ in range(10)])
            sender.start()
            sender.join()
        steps.warn("no webhook configured")

    terminal = capsys.readouterr()
    lines = terminal.out.splitlines()
    assert lines[0] == "state in /somewhere"
    assert lines[1].startswith("[1/2] Generate data   0:0")
    assert lines[2:] == ["    40,000 transactions", lines[3], "    ! no webhook configured"]
    assert lines[3].startswith("[2/2] Score them   0:0")
    assert terminal.err == ""

    log = log_path.read_text()
    assert "INFO    prefect.task_runs [ingest-1a2]: Finished in state Completed()" in log
    assert "flows.feature_store.validation: Batch b1: 9 valid, 1 quarantined" in log
    assert "WARNING some.library: a library warning" in log and "chatter" not in log
    assert "py.warnings" in log and "DeprecationWarning: old_api() is deprecated" in log
    assert "Successfully registered model 'fraud_scorer'." in log
    assert "an error line a library prints" in log
    # Back as it was: printing and logging reach the terminal again.
    assert logging.getLogger().handlers == root_handlers
    print("after")
    assert capsys.readouterr().out == "after\n"


def test_a_failure_names_the_step_the_error_and_the_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log_path = tmp_path / "demo.log"
    with pytest.raises(SystemExit) as exited, Steps(total=3, log_path=log_path) as steps:
        steps.step("Train")
        steps.step("Serve")
        raise ConnectionError("Redis at redis://127.0.0.1:6379/0 is unreachable")
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert "Failed in [2/3] Serve after 0:0" in err
    assert "ConnectionError: Redis at redis://127.0.0.1:6379/0 is unreachable" in err
    assert f"The full log, with the traceback: {log_path}" in err
    log = log_path.read_text()
    assert "failed in step 2/3 (Serve)" in log and "Traceback (most recent call last)" in log


def test_the_commands_own_exit_message_is_shown_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited, Steps(total=1, log_path=tmp_path / "demo.log") as steps:
        steps.step("Train")
        raise SystemExit("The first model did not pass the promotion gate's floors.")
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err.count("The first model did not pass the promotion gate's floors.") == 1
    assert "SystemExit" not in err


def test_a_clean_exit_is_not_a_failure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited, Steps(total=1, log_path=tmp_path / "demo.log") as steps:
        steps.step("Nothing to do")
        raise SystemExit(0)
    assert exited.value.code == 0
    assert capsys.readouterr().err == ""


def test_a_handler_whose_stream_cannot_be_set_is_left_alone(tmp_path: Path) -> None:
    """Some library hangs logging.lastResort on its logger: its stream is a property of sys.stderr."""
    library = logging.getLogger("some.library")
    library.addHandler(logging.lastResort)
    try:
        with Steps(1, tmp_path / "demo.log") as steps:
            steps.step("one")
            library.warning("through lastResort")
        assert "through lastResort" in (tmp_path / "demo.log").read_text()
    finally:
        library.removeHandler(logging.lastResort)
