"""The landing writer: every transaction that reached the stream lands in the raw zone the batch pipeline ingests.

    python -m services.stream.landing

Transactions the scoring service decided, stream scoring decided, or upstream systems published are written,
every ``landing_flush_seconds`` (or 50,000 rows), as ``<raw_dir>/transactions/stream-<first>_<last>.parquet``
in the raw schema, labels empty (they arrive later, as labels files). The feature pipeline then validates them
and writes the offline rows, so training sets are built from the same transactions serving saw. Backfill
entries (the pipeline's own history, published for the window processor) came from the raw zone and are not
written again. Entries are acknowledged once their file exists; after a crash, entries a file already holds
are acknowledged without a second copy.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model_store.atomic_files import write_atomically
from services.stream.consumer import Effects, Entry
from services.stream.entry_files import EntryFileWriter, WrittenRanges, range_name
from services.stream.events import decode_entries, raw_row
from services.stream.runner import Role, main

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from services.stream.settings import StreamSettings

logger = logging.getLogger(__name__)

GROUP = "landing"
PREFIX = "stream-"
NOT_LANDED = frozenset({"backfill"})


class LandingWriter(EntryFileWriter):
    """Transactions in, raw Parquet files out (see the module docstring)."""

    def __init__(self, transactions_dir: Path, flush_seconds: float, flush_rows: int = 50_000) -> None:
        super().__init__(flush_seconds, flush_rows)
        self.transactions_dir = Path(transactions_dir)
        self._rows: list[dict[str, Any]] = []
        self._entries: list[Entry] = []
        self._ranges: WrittenRanges | None = None

    @property
    def buffered(self) -> int:
        return len(self._rows)

    async def handle(self, entries: list[Entry]) -> Effects:
        effects = Effects(ack=[])
        for entry, event in decode_entries(entries, effects.dead_letters):
            if event.source in NOT_LANDED or self._landed().holds(entry.id):
                effects.ack.append(entry)
                continue
            self._rows.append(raw_row(event.transaction))
            self._entries.append(entry)
        effects.ack.extend(await self.write_if_due())
        return effects

    def write(self) -> list[Entry]:
        """Write what is held as one raw file; returns the entries now safe to acknowledge (none if it failed)."""
        if not self._rows:
            return []
        import pandas as pd

        name = PREFIX + range_name(e.id for e in self._entries)
        frame = pd.DataFrame(self._rows)
        frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True).dt.as_unit("us")
        frame["is_fraud"] = pd.array([None] * len(frame), dtype="Int64")
        frame["label_timestamp"] = pd.Series(pd.NaT, index=frame.index, dtype="datetime64[us, UTC]")
        path = self.transactions_dir / f"{name}.parquet"
        try:
            write_atomically(path, lambda partial: frame.to_parquet(partial, index=False))
        except OSError as error:
            logger.error("landing: %s; %d rows kept for the next attempt", error, len(frame))
            return []
        self._landed().add(name)
        done, self._entries, self._rows = self._entries, [], []
        self.written_rows += len(frame)
        logger.info("landed %d transactions in %s", len(frame), path)
        return done

    def _landed(self) -> WrittenRanges:
        if self._ranges is None:
            folder = self.transactions_dir
            names = [p.stem for p in folder.glob(f"{PREFIX}*.parquet")] if folder.is_dir() else []
            self._ranges = WrittenRanges(names, PREFIX)
        return self._ranges


async def landing_role(settings: StreamSettings, client: Redis, stopping: asyncio.Event) -> Role:
    writer = LandingWriter(settings.raw_dir / "transactions", settings.landing_flush_seconds)
    logger.info(
        "landing writer: %s to %s every %.0f s",
        settings.stream("transactions"),
        writer.transactions_dir,
        settings.landing_flush_seconds,
    )
    return Role(
        name="landing",
        group=GROUP,
        streams=[settings.stream("transactions")],
        handler=writer.handle,
        flush_due=writer.write_if_due,
        flush=writer.flush,
    )


if __name__ == "__main__":
    main(landing_role, background=True)
