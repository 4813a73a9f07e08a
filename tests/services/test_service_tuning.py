"""The service tunes the interpreter for serving while it runs and gives the process back as it found it.

Its own module: the service's ASGI app is built once per process and serves one instance at a time, so this
client must not overlap test_service.py's module-wide one.
"""

from __future__ import annotations

from tests.services.conftest import scorer_client


def test_serving_tunes_the_interpreter_and_shutdown_restores_it(served_env: dict[str, str]) -> None:
    import gc
    import sys

    from services.scorer.service import GC_THRESHOLDS, SWITCH_INTERVAL_SECONDS

    before = gc.get_threshold(), sys.getswitchinterval()
    with scorer_client(served_env):
        assert (gc.get_threshold(), sys.getswitchinterval()) == (GC_THRESHOLDS, SWITCH_INTERVAL_SECONDS)
        assert gc.get_freeze_count() > 0
    assert (gc.get_threshold(), sys.getswitchinterval()) == before
    assert gc.get_freeze_count() == 0
