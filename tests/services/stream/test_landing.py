"""The landing writer: the stream's transactions become raw files the feature pipeline ingests, exactly once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pandas as pd

from flows.feature_store.ingestion import read_raw_table
from flows.feature_store.validation import validate_batch
from flows.fraud_data.schema import transactions_schema
from services.stream.consumer import Entry
from services.stream.events import encode
from services.stream.landing import LandingWriter

STREAM = "rtml:transactions:test"


def entry(i: int, source: str = "scorer") -> Entry:
    body = (
        f'{{"transaction_id":"l{i}","customer_id":{1 + i % 4},"merchant_id":{10 + i % 3},"amount":{5 + i}.25,'
        f'"timestamp":"2026-09-07T10:{i:02d}:00+00:00","channel":"chip"}}'
    ).encode()
    return Entry(STREAM, f"{500 + i}-0".encode(), encode(body, source))


def test_transactions_land_as_a_raw_batch_the_pipeline_validates(tmp_path: Path) -> None:
    writer = LandingWriter(tmp_path, flush_seconds=3600, flush_rows=5)
    entries = [
        entry(0),
        entry(1, "upstream"),
        entry(2, "backfill"),
        entry(3, "stream-scorer"),
        entry(4),
        entry(5),
    ]
    effects = asyncio.run(writer.handle(entries))
    # The backfill entry came from the raw zone: acknowledged, not landed again; the five others land now.
    assert [e.id for e in effects.ack] == [b"502-0", b"500-0", b"501-0", b"503-0", b"504-0", b"505-0"]
    (path,) = tmp_path.glob("*.parquet")
    assert path.name == "stream-500-0_505-0.parquet"
    raw = read_raw_table(path, transactions_schema)
    assert sorted(raw["transaction_id"]) == ["l0", "l1", "l3", "l4", "l5"]
    result = validate_batch(
        raw,
        transactions_schema,
        batch_name=path.stem,
        id_column="transaction_id",
        references={"customer_id": {1, 2, 3, 4}, "merchant_id": {10, 11, 12}},
        timestamp_column="event_timestamp",
        now=pd.Timestamp("2026-09-08", tz="UTC"),
    )
    assert len(result.quarantined) == 0 and result.valid["is_fraud"].isna().all()
    assert str(raw["event_timestamp"].dtype) == "datetime64[us, UTC]"


def test_after_a_crash_landed_entries_are_not_landed_twice(tmp_path: Path) -> None:
    writer = LandingWriter(tmp_path, flush_seconds=3600)
    asyncio.run(writer.handle([entry(i) for i in range(3)]))
    asyncio.run(writer.flush())  # the file exists; the crash came before the acknowledgement
    again = LandingWriter(tmp_path, flush_seconds=3600)
    effects = asyncio.run(again.handle([entry(i) for i in range(4)]))
    assert [e.id for e in effects.ack] == [b"500-0", b"501-0", b"502-0"]
    asyncio.run(again.flush())
    landed = pd.concat(pd.read_parquet(p) for p in sorted(tmp_path.glob("*.parquet")))
    assert sorted(landed["transaction_id"]) == ["l0", "l1", "l2", "l3"]


def test_held_transactions_are_written_when_due_even_if_the_stream_goes_quiet(tmp_path: Path) -> None:
    """The consumer asks a quiet writer whether a write is due: the last transactions do not wait for more."""
    import time

    writer = LandingWriter(tmp_path, flush_seconds=0.2)
    effects = asyncio.run(writer.handle([entry(0), entry(1)]))
    assert effects.ack == [] and writer.buffered == 2
    assert asyncio.run(writer.write_if_due()) == []  # not due yet
    time.sleep(0.25)
    assert [e.id for e in asyncio.run(writer.write_if_due())] == [b"500-0", b"501-0"]
    assert writer.buffered == 0 and len(list(tmp_path.glob("*.parquet"))) == 1
