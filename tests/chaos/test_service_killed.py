"""Scenario 1: every process of the scoring service SIGKILLed under load at 8 connections, then restarted.

Every decision answered 200 must be in the decision record (the transactions stream) and in the prediction log
the traffic log writes from it: the service publishes each decision before its answer leaves.
"""

from __future__ import annotations

import time

from deploy.local.servers import kill_tree
from tests.chaos.conftest import Stack, scaled
from tests.chaos.load import CONNECTION_FAILED
from tests.services.conftest import bentoml_serve

CONNECTIONS = 8


def test_killed_under_load_it_loses_no_answered_decision(stack: Stack, figures: list[str]) -> None:
    seconds = scaled(2, 20)
    assert stack.service is not None
    with stack.load(CONNECTIONS) as load:
        load.wait_for(50)
        time.sleep(seconds)
        killed_at = time.monotonic()
        killed = kill_tree(stack.service.process.pid)
        stack.service.process.wait(10)
        assert len(killed) >= 2, "the server and its worker"
        restart_dir = stack.workdir / "restarted"
        restart_dir.mkdir()
        with bentoml_serve(stack.env, restart_dir, stack.redis) as restarted:
            ready_at = time.monotonic()
            load.url = restarted.url
            answered_before = len(load.ids(200))
            load.wait_for(answered_before + 50)
            time.sleep(seconds)
    answered = load.ids(200)
    stack.wait_caught_up("traffic-log", "windows-0-of-1")
    recorded, logged = stack.recorded_ids(), stack.logged_ids()

    figures.append(f"{CONNECTIONS} connections, {seconds:.0f} s before and after the kill")
    figures.append(f"answers by status: {load.statuses()} ({CONNECTION_FAILED}: no HTTP answer)")
    figures.append(f"processes killed: {len(killed)}; service ready again after {ready_at - killed_at:.1f} s")
    figures.append(
        f"answered 200: {len(answered):,}; missing from the decision record: {len(answered - recorded)}, "
        f"from the prediction log: {len(answered - logged)}"
    )
    assert answered - recorded == set()
    assert answered - logged == set()
    # Only a dead service fails a request: no answer at all, never an error status.
    assert set(load.statuses()) <= {200, CONNECTION_FAILED}
