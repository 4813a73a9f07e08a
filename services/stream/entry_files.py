"""Files named after the first and last stream entry they hold: a consumer that writes files acknowledges
entries only once their file exists, and after a crash skips the entries a written file already holds."""

from __future__ import annotations

import asyncio
import bisect
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


class WrittenRanges:
    """The entry ranges of the files a consumer has written (names ``<prefix><first>_<last>``): which entries a
    written file already holds.

    Each file holds every entry of its consumer's flush in that range: one consumer per group reads the stream
    in order, so a flush is a contiguous run of entries. Checked for every entry read, so the check must not
    grow with the files: a new entry (newer than every range, all of them while nothing has crashed) is told
    in one comparison, a redelivered one by bisection.
    """

    def __init__(self, names: Iterable[str] = (), prefix: str = "") -> None:
        self.prefix = prefix
        # Ranges sorted by their first entry, and the newest last entry of the ranges up to each position.
        self._firsts: list[tuple[int, int]] = []
        self._lasts: list[tuple[int, int]] = []
        self._reach: list[tuple[int, int]] = []
        # Sorted once: a folder lists its files in any order, and ``add`` is cheap only at the end.
        for first, last in sorted(filter(None, map(self._span, names))):
            self._append(first, last)

    def _span(self, name: str) -> tuple[tuple[int, int], tuple[int, int]] | None:
        first, _, last = name.removeprefix(self.prefix).partition("_")
        return (entry_order(first), entry_order(last)) if last else None

    def _append(self, first: tuple[int, int], last: tuple[int, int]) -> None:
        self._firsts.append(first)
        self._lasts.append(last)
        self._reach.append(max(self._reach[-1], last) if self._reach else last)

    def add(self, name: str) -> None:
        """Record a written file by its name (a name that is not a range is ignored)."""
        span = self._span(name)
        if span is None:
            return
        first, last = span
        # A consumer writes its files in entry order, so the tail to re-append is usually empty.
        at = bisect.bisect_right(self._firsts, first)
        tail = list(zip(self._firsts[at:], self._lasts[at:], strict=True))
        del self._firsts[at:], self._lasts[at:], self._reach[at:]
        for later_first, later_last in [(first, last), *tail]:
            self._append(later_first, later_last)

    def holds(self, entry_id: bytes | str) -> bool:
        """Whether a written file holds the entry."""
        if not self._reach:
            return False
        order = entry_order(entry_id)
        if order > self._reach[-1]:
            return False
        at = bisect.bisect_right(self._firsts, order) - 1
        # Some range starting at or before the entry reaches it.
        return at >= 0 and self._reach[at] >= order


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
