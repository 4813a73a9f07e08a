"""The feature pipeline in this process, SIGKILLed by itself at a chosen point: a kill that lands mid-write.

Run: ``python -m tests.chaos.killed_pipeline offline N`` (dies while writing the N-th offline-store file: half of
it on disk, then SIGKILL) or ``python -m tests.chaos.killed_pipeline materialize N`` (dies after writing half
of the N-th feature view's rows to the online store). Settings come from the environment, as for the flow.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def arm(point: str, n: int) -> None:
    """Patch the writer at ``point`` so that its ``n``-th call is cut off by SIGKILL."""
    from model_store.settings import get_settings

    calls = 0
    if point == "offline":
        import flows.feature_store.offline_store as offline_store

        offline_dir = get_settings().offline_dir
        write_table = offline_store.pq.write_table

        def cut_write(table: Any, where: Any, **kwargs: Any) -> None:
            nonlocal calls
            write_table(table, where, **kwargs)
            if Path(where).is_relative_to(offline_dir):
                calls += 1
                if calls == n:
                    size = os.path.getsize(where)
                    os.truncate(where, size // 2)
                    die()

        offline_store.pq.write_table = cut_write
    elif point == "materialize":
        import flows.feature_store.materialize as materialize

        write_redis = materialize._write_redis

        def cut_materialize(store: Any, fv: Any, latest: Any, join_keys: Any) -> int:
            nonlocal calls
            calls += 1
            if calls == n:
                write_redis(store, fv, latest.iloc[: len(latest) // 2], join_keys)
                die()
            return write_redis(store, fv, latest, join_keys)

        materialize._write_redis = cut_materialize
    else:
        raise SystemExit(f"unknown kill point {point!r}: offline or materialize")


if __name__ == "__main__":
    from model_store import libraries

    libraries.typeguard.apply_patches()
    arm(sys.argv[1], int(sys.argv[2]))
    from flows.feature_pipeline import feature_pipeline

    feature_pipeline()
    raise SystemExit(f"the pipeline ended before kill point {sys.argv[1]} {sys.argv[2]}")
