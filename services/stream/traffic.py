"""The traffic log: every decision in the transactions stream, profiled with whylogs and logged as a prediction.

    python -m services.stream.traffic

The scoring service publishes each decision, with the model input it decided on, before it answers; this
process turns them into what the drift flows read (``model_store/profiles.py``): per hour of event time, a
whylogs profile of the model's input plus ``score``, and a Parquet log of predictions (``transaction_id``,
``event_timestamp``, ``score``, ``decision``, ``model_version``). It writes every ``traffic_flush_seconds``
(or 50,000 rows) and acknowledges entries only once their hour's files are written, so a crash of the service
or of this process loses no decision. Files are named after the first and last stream entry they hold; after a
crash, an entry that a written file already holds is acknowledged without being written twice.

It reads the shadow stream too (``services/scorer/shadow.py``): the scores of the model that did not decide go
to the shadow prediction log, hour by hour beside the decisions, for the drift report's champion-versus-
challenger section. They are not profiled: the serving profiles describe the traffic the decisions saw.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from model_store.profiles import PREDICTION_COLUMNS, SCORE_COLUMN, PredictionLog, ProfileStore, hour_floor
from services.stream.consumer import Effects, Entry
from services.stream.entry_files import EntryFileWriter, WrittenRanges, range_name
from services.stream.events import SHADOW, decode_entries
from services.stream.runner import Role, main

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from services.stream.settings import StreamSettings

logger = logging.getLogger(__name__)

GROUP = "traffic-log"
# Buffered beyond this while writes fail, the process stops: its entries stay pending in Redis.
MAX_ROWS = 1_000_000


@dataclass
class _Hour:
    rows: list[dict[str, Any]] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)


class TrafficRecorder(EntryFileWriter):
    """Decided events in, hourly profiles and prediction logs out (see the module docstring)."""

    def __init__(self, store: ProfileStore, flush_seconds: float, flush_rows: int = 50_000) -> None:
        super().__init__(flush_seconds, flush_rows)
        self.store = store
        # Keyed by log and hour: each log's files name the entries of its own stream (``WrittenRanges``).
        self._hours: dict[tuple[PredictionLog, datetime], _Hour] = {}
        self._buffered = 0
        self._written: dict[tuple[PredictionLog, datetime], WrittenRanges] = {}

    @property
    def buffered(self) -> int:
        return self._buffered

    async def handle(self, entries: list[Entry]) -> Effects:
        effects = Effects(ack=[])
        for entry, event in decode_entries(entries, effects.dead_letters):
            decision = event.decision
            if decision is None:  # decided elsewhere: nothing to record
                effects.ack.append(entry)
                continue
            log: PredictionLog = "shadow" if event.source == SHADOW else "predictions"
            key = (log, hour_floor(event.transaction.timestamp))
            if self._ranges(key).holds(entry.id):  # written before a crash, acknowledged after it
                effects.ack.append(entry)
                continue
            # A shadow score carries the features the decision was made on: the decision's profile has them.
            row: dict[str, Any] = dict(decision.features) if log == "predictions" else {}
            row[SCORE_COLUMN] = decision.fraud_probability
            row["transaction_id"] = event.transaction.transaction_id
            row["event_timestamp"] = event.transaction.timestamp
            row["decision"] = decision.decision
            row["model_version"] = decision.model_version
            held = self._hours.setdefault(key, _Hour())
            held.rows.append(row)
            held.entries.append(entry)
            self._buffered += 1
        effects.ack.extend(await self.write_if_due())
        return effects

    def write(self) -> list[Entry]:
        """Write each held hour's profile, then its prediction log; returns the entries now safe to acknowledge.

        A failed write (a full disk, say) keeps its rows for the next attempt and is logged with the path.
        """
        done: list[Entry] = []
        for key in sorted(self._hours):
            held = self._hours[key]
            try:
                self._write_hour(key, held)
            except OSError as error:
                logger.error(
                    "traffic log: writing %s of hour %s failed (%s); rows kept for the next attempt",
                    *key,
                    error,
                )
                if self._buffered > MAX_ROWS:
                    raise RuntimeError(
                        f"traffic log holds {self._buffered} unwritten rows: stopping; its entries stay pending "
                        "in Redis and are written when it restarts"
                    ) from error
                continue
            done.extend(held.entries)
            self._buffered -= len(held.rows)
            self.written_rows += len(held.rows)
            del self._hours[key]
        return done

    def _write_hour(self, key: tuple[PredictionLog, datetime], held: _Hour) -> None:
        import pandas as pd

        from model_store.profiles import profile_frame

        log, hour = key
        name = range_name(e.id for e in held.entries)
        frame = pd.DataFrame(held.rows)
        if log == "predictions":
            profiled = [c for c in frame.columns if c == SCORE_COLUMN or c not in PREDICTION_COLUMNS]
            self.store.write_window(profile_frame(frame[profiled]), hour, name=name)
        # Written last: its presence is what says this hour's entries are recorded (``WrittenRanges``).
        self.store.write_predictions(frame[list(PREDICTION_COLUMNS)], hour, name=name, log=log)
        self._ranges(key).add(name)

    def _ranges(self, key: tuple[PredictionLog, datetime]) -> WrittenRanges:
        ranges = self._written.get(key)
        if ranges is None:
            ranges = self._written[key] = WrittenRanges(self.store.prediction_files(key[1], log=key[0]))
            if len(self._written) > 1_000:  # forget hours long past
                oldest = min(self._written, key=lambda k: k[1])
                del self._written[oldest]
        return ranges


async def traffic_role(settings: StreamSettings, client: Redis, stopping: asyncio.Event) -> Role:
    from model_store import libraries

    libraries.whylogs.apply_patches()  # imports whylogs: slow, paid at start rather than at the first write

    recorder = TrafficRecorder(
        ProfileStore(settings.profile_store, settings.model_name), settings.traffic_flush_seconds
    )
    logger.info(
        "traffic log: decisions of %s and shadow scores of %s to %s every %.0f s",
        settings.stream("transactions"),
        settings.stream("shadow"),
        recorder.store.base,
        settings.traffic_flush_seconds,
    )
    return Role(
        name="traffic-log",
        group=GROUP,
        streams=[settings.stream("transactions"), settings.stream("shadow")],
        handler=recorder.handle,
        flush_due=recorder.write_if_due,
        flush=recorder.flush,
    )


if __name__ == "__main__":
    main(traffic_role, background=True)
