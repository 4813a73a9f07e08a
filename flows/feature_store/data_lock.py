"""The lock on the data folders: one feature-pipeline run writes at a time, and a training set is read whole.

An ``flock`` on ``<data_dir>/.lock``: exclusive for a feature-pipeline run (two runs at once would ingest the
same new batches twice and race on the manifests), shared while a training set is read (so it never mixes
files from before and after a run). The kernel releases it when its process ends, kill -9 included, so a dead
run never leaves a stale lock. The exclusive holder writes who it is into the file; a run that has to wait
logs whom it waits for, and gives up after ``wait_seconds`` with an error that says so.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.5


class DataLocked(RuntimeError):
    """The data folders stayed locked by another run for longer than the caller would wait."""


@contextmanager
def data_lock(
    data_dir: Path, purpose: str, exclusive: bool, wait_seconds: float, log: logging.Logger | None = None
) -> Iterator[None]:
    """Hold the data folders' lock (exclusive to write, shared to read) for the block; waits for other holders."""
    log = log or logger
    path = Path(data_dir) / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
        started = time.monotonic()
        announced = False
        while True:
            try:
                fcntl.flock(handle, mode)
                break
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "a training set being read"
                waited = time.monotonic() - started
                if waited > wait_seconds:
                    raise DataLocked(
                        f"{purpose} will not run: the data under {data_dir} stayed locked by {holder} for "
                        f"{waited:.0f} s (lock {path}); run it again once that run has ended"
                    ) from None
                if not announced:
                    log.warning("%s waits for the data lock %s, held by %s", purpose, path, holder)
                    announced = True
                time.sleep(POLL_SECONDS)
        if announced:
            log.info("%s has the data lock after %.1f s", purpose, time.monotonic() - started)
        if exclusive:
            handle.truncate(0)
            handle.write(
                f"{purpose} (pid {os.getpid()} on {socket.gethostname()}, since {datetime.now(UTC):%c} UTC)"
            )
            handle.flush()
        try:
            yield
        finally:
            if exclusive:
                handle.truncate(0)
                handle.flush()
            fcntl.flock(handle, fcntl.LOCK_UN)
