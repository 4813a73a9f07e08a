"""The process around a consumer: how a consumer nothing waits on steps back from the scoring service's CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.stream.runner import AUTOGROUP, BACKGROUND_NICENESS

ROOT = Path(__file__).resolve().parents[3]
# The nice a child of this process ends at (the kernel caps it at 19).
LOWERED = min(os.nice(0) + BACKGROUND_NICENESS, 19)

# Prints the process's nice and its session's, after run_in_background.
PROBE = """
import os
from services.stream.runner import AUTOGROUP, run_in_background
run_in_background()
print(os.nice(0), AUTOGROUP.read_text().split()[-1])
"""

pytestmark = pytest.mark.skipif(not AUTOGROUP.exists(), reason="this kernel has no autogroup scheduling")


def backgrounded(new_session: bool) -> tuple[int, int]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        start_new_session=new_session,
        check=True,
    )
    process_nice, session_nice = done.stdout.split()
    return int(process_nice), int(session_nice)


def test_a_session_leader_lowers_its_sessions_priority_too() -> None:
    # Across sessions the kernel weighs sessions, not processes: the process nice alone did nothing.
    assert backgrounded(new_session=True) == (LOWERED, BACKGROUND_NICENESS)


def test_a_consumer_in_someone_elses_session_leaves_the_session_alone() -> None:
    ours = int(AUTOGROUP.read_text().split()[-1])
    process_nice, session_nice = backgrounded(new_session=False)
    assert process_nice == LOWERED
    assert session_nice == ours
    assert int(AUTOGROUP.read_text().split()[-1]) == ours
