"""The process around a consumer: settings, the Redis client, signals, health and metrics, the last flush.

Each stream process (``services.stream.processor``, ``.traffic``, ``.landing``, ``.scoring``) describes its
``Role`` (group, streams, handler) and calls ``main(make_role)``; this module runs it the same way for all:
SIGTERM or SIGINT stop reading, the batch in hand is committed, a buffering role writes and acknowledges what it
holds, and the process exits 0 within Kubernetes' grace period.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from services.stream.consumer import Effects, Entry, Fence, FenceLost, GroupConsumer, Handler

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from services.stream.settings import StreamSettings

logger = logging.getLogger(__name__)

# Niceness of the consumers nothing waits on (shadow scorer, traffic log, landing writer).
BACKGROUND_NICENESS = 10
AUTOGROUP = Path("/proc/self/autogroup")


@dataclass
class Role:
    """What one kind of stream process consumes and how."""

    name: str
    group: str
    streams: list[str]
    handler: Handler
    fence: Fence | None = None
    on_state_lost: Callable[[], None] | None = None
    # A role that buffers writes what is due when the stream is idle, and all it holds at shutdown; each returns
    # the entries that may now be acknowledged.
    flush_due: Callable[[], Awaitable[list[Entry]]] | None = None
    flush: Callable[[], Awaitable[list[Entry]]] | None = None
    release: Callable[[], Awaitable[None]] | None = None
    # Read at most this often unless behind (``GroupConsumer.pace_seconds``).
    pace_seconds: float = 0.0
    # Behind, commit a batch after the next one's reads (``GroupConsumer.defer_commits``).
    defer_commits: bool = False
    # Entries read at once (None: ``stream_batch_size``, or the background batch for a background consumer).
    batch_size: int | None = None


RoleFactory = Callable[["StreamSettings", "Redis", asyncio.Event], Awaitable[Role | None]]


async def run(settings: StreamSettings, make_role: RoleFactory, background: bool = False) -> None:
    """Build the role (it may wait, for a partition lease, say), consume until stopped, flush, release.

    A ``background`` consumer is one nothing waits on (shadow scorer, traffic log, landing writer): it steps back
    from the scoring service's CPU before the role is built (loading a model, say) and reads and commits the
    background batch at the background pace (``RTML_BACKGROUND_BATCH_SIZE``, ``RTML_BACKGROUND_PACE_SECONDS``).
    """
    from redis.asyncio import Redis

    from services.stream.health import HealthServer, stream_metrics

    client = Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=30)
    stopping = asyncio.Event()
    consumer: GroupConsumer | None = None

    def stop() -> None:
        stopping.set()
        if consumer is not None:
            consumer.stop()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    # Serving health first: a spare waiting for a partition is alive (and not ready), not a stuck process.
    health = HealthServer(settings.stream_health_port, stream_metrics())
    health.start()
    try:
        if background:
            run_in_background()
        role = await make_role(settings, client, stopping)
        if role is None:
            return
        health.collector.role = role.name
        collect_less_often()
        consumer = GroupConsumer(
            client,
            role.streams,
            role.group,
            role.handler,
            dead_letter_stream=settings.stream("dead-letter"),
            batch_size=role.batch_size
            or (settings.background_batch_size if background else settings.stream_batch_size),
            block_ms=settings.stream_block_ms,
            fence=role.fence,
            on_state_lost=role.on_state_lost,
            on_idle=role.flush_due,
            pace_seconds=settings.background_pace_seconds if background else role.pace_seconds,
            defer_commits=role.defer_commits,
        )
        health.watch(consumer)
        if stopping.is_set():
            return
        try:
            await consumer.run()
        except FenceLost as error:
            # Another process holds the partition now (this one stalled past its lease): stop writing at once.
            logger.error("%s; exiting so that this process is restarted as a spare", error)
            raise SystemExit(1) from None
        if role.flush is not None:
            held = await role.flush()
            if held:
                await consumer.commit(held, Effects())
        if role.release is not None:
            await role.release()
        logger.info("%s stopped after %d entries", role.name, consumer.stats.entries)
    finally:
        health.stop()
        await client.aclose()


def run_in_background() -> None:
    """Lower this process's CPU priority: where a consumer nothing waits on shares cores with the scoring service
    (a laptop, a node), the kernel serves the service first. Its batches come at its pace, once a second, and
    would otherwise hold a core for tens of milliseconds while requests wait."""
    os.nice(BACKGROUND_NICENESS)
    # Linux's autogroup scheduling (on by default on desktops and on this machine) shares CPU between sessions
    # first and applies a process's nice only within its session: a consumer that leads its own session (every
    # launcher here starts it so) had the service's weight, nice or not. Measured: two busy loops in two
    # sessions on one core split it 50/50 at nice 0 and 10; with the session's nice at 10 as well, 90/10.
    # Only a session leader sets it, so that a consumer started from a shell never slows the shell's session;
    # in a container the CPU cgroup decides and the file changes nothing.
    if os.getsid(0) == os.getpid():
        try:
            AUTOGROUP.write_text(str(BACKGROUND_NICENESS))
        except OSError as error:  # no autogroup in this kernel, or not Linux
            logger.debug("session nice not set (%s): the process nice applies alone", error)


def collect_less_often() -> None:
    """Take the libraries' objects out of garbage collection and collect young objects less often.

    A batch allocates tens of thousands of short-lived objects over a heap of long-lived ones (Feast, pandas,
    the window state); with Python's default thresholds the collector ran so often that it took a fifth of the
    window processor's time (docs/streaming.md, "Throughput").
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def main(make_role: RoleFactory, background: bool = False) -> None:
    """The entry point of a stream process: its settings from the environment, then ``run``."""
    from model_store import libraries
    from services.stream.settings import get_stream_settings

    libraries.typeguard.apply_patches()  # before anything imports Feast
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(run(get_stream_settings(), make_role, background))


__all__ = ["Effects", "Entry", "Handler", "Role", "main", "run"]
