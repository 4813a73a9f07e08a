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

# Prints the process's nice, then its session's autogroup line, after run_in_background.
PROBE = """
import os
from services.stream.runner import AUTOGROUP, run_in_background
run_in_background()
print(os.nice(0))
print(AUTOGROUP.read_text().strip())
"""

pytestmark = pytest.mark.skipif(not AUTOGROUP.exists(), reason="this kernel has no autogroup scheduling")


def backgrounded(new_session: bool) -> tuple[int, str]:
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
    process_nice, session = done.stdout.split("\n", 1)
    return int(process_nice), session.strip()


def test_a_session_leader_lowers_its_sessions_priority_too() -> None:
    # Across sessions the kernel weighs sessions, not processes: the process nice alone did nothing.
    process_nice, session = backgrounded(new_session=True)
    assert process_nice == LOWERED
    assert session.endswith(f"nice {BACKGROUND_NICENESS}")


def test_a_consumer_in_someone_elses_session_leaves_the_session_alone() -> None:
    # A process in the root autogroup (one started by a daemon without a session of its own, as CI's is)
    # reads an empty line: compare lines, not parsed figures.
    ours = AUTOGROUP.read_text().strip()
    process_nice, session = backgrounded(new_session=False)
    assert process_nice == LOWERED
    assert session == ours
    assert AUTOGROUP.read_text().strip() == ours


# Runs a background stream process whose role reports its nice while it is built (a model load, say).
BACKGROUND_RUN = """
import asyncio
import os
from services.stream.runner import run
from services.stream.settings import get_stream_settings

async def make_role(settings, client, stopping):
    print(os.nice(0))
    return None

asyncio.run(run(get_stream_settings(), make_role, background={background}))
"""


@pytest.mark.parametrize("background", [True, False])
def test_a_background_process_steps_back_before_its_role_is_built(background: bool) -> None:
    done = subprocess.run(
        [sys.executable, "-c", BACKGROUND_RUN.format(background=background)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "RTML_STREAM_HEALTH_PORT": "0"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert int(done.stdout) == (LOWERED if background else os.nice(0))
