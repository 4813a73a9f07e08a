"""Files named after the first and last stream entry they hold: a consumer that writes files acknowledges
entries only once their file exists, and after a crash skips the entries a written file already holds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.stream.consumer import Entry


def entry_order(entry_id: bytes | str) -> tuple[int, int]:
    """A stream entry id (``<ms>-<seq>``) as a sortable pair."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def range_name(entry_ids: Iterable[bytes]) -> str:
    """``<first>_<last>`` of the entries a file holds: the same entries give the same name."""
    ordered = sorted(entry_ids, key=entry_order)
    return f"{ordered[0].decode()}_{ordered[-1].decode()}"


def covered(names: Iterable[str], entry_id: bytes, prefix: str = "") -> bool:
    """Whether one of the files named ``<prefix><first>_<last>`` holds the entry.

    Each file holds every entry of its consumer's flush in that range: one consumer per group reads the
    stream in order, so a flush is a contiguous run of entries.
    """
    order = entry_order(entry_id)
    for name in names:
        first, _, last = name.removeprefix(prefix).partition("_")
        if last and entry_order(first) <= order <= entry_order(last):
            return True
    return False


class EntryFileWriter:
    """A consumer that turns stream entries into files: it holds entries until ``write`` has put them in a file,
    every ``flush_seconds`` or ``flush_rows``, and acknowledges them only then. Subclasses hold the rows and
    write them (``buffered``, ``write``)."""

    def __init__(self, flush_seconds: float, flush_rows: int) -> None:
        self.flush_seconds = flush_seconds
        self.flush_rows = flush_rows
        self.written_rows = 0
        self._since = time.monotonic()

    @property
    def buffered(self) -> int:
        raise NotImplementedError

    def write(self) -> list[Entry]:
        """Write what is held; returns the entries now safe to acknowledge (none when the write failed)."""
        raise NotImplementedError

    def due(self) -> bool:
        held = self.buffered
        return held >= self.flush_rows or (held > 0 and time.monotonic() - self._since >= self.flush_seconds)

    async def write_if_due(self) -> list[Entry]:
        """``flush`` when a write is due (the consumer asks while the stream is quiet too)."""
        return await self.flush() if self.due() else []

    async def flush(self) -> list[Entry]:
        """Write everything held (off the event loop); returns the entries written."""
        self._since = time.monotonic()
        return await asyncio.to_thread(self.write)
