"""The traffic log: decisions from the stream become hourly profiles and prediction logs, each exactly once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from model_store.profiles import ProfileStore
from services.scorer.transaction import Transaction
from services.stream.consumer import Effects, Entry
from services.stream.events import decision_json, encode, transaction_json
from services.stream.traffic import TrafficRecorder

T0 = datetime(2026, 9, 7, 10, 0, tzinfo=UTC)
STREAM = "rtml:transactions:test"
SHADOW_STREAM = "rtml:shadow:test"


def entry(i: int, minutes: int, decided: bool = True, shadow: bool = False) -> Entry:
    request = Transaction.model_validate(
        {
            "transaction_id": f"t{i}",
            "customer_id": 1 + i % 7,
            "merchant_id": 1 + i % 3,
            "amount": 10.0 + i,
            "timestamp": (T0 + timedelta(minutes=minutes)).isoformat(),
            "channel": "online",
        }
    )
    result = {
        "fraud_probability": i / 1000,
        "decision": "approve",
        "threshold": 0.5,
        "model_name": "m",
        "model_version": "4" if shadow else "3",
    }
    features = {"amount_sum_1h": float(i), "channel": "online", "txn_count_1h": None}
    decision = decision_json(result, T0, features) if decided else None
    stream, source = (SHADOW_STREAM, "shadow") if shadow else (STREAM, "scorer")
    return Entry(stream, f"{1_000 + i}-0".encode(), encode(transaction_json(request), source, decision))


def handle(recorder: TrafficRecorder, entries: list[Entry]) -> Effects:
    return asyncio.run(recorder.handle(entries))


def window(store: ProfileStore) -> tuple[datetime, datetime]:
    return T0 - timedelta(hours=1), T0 + timedelta(hours=3)


def test_decisions_are_written_by_hour_and_acknowledged_only_once_written(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path, "m")
    recorder = TrafficRecorder(store, flush_seconds=3600, flush_rows=10)
    first = [entry(i, minutes=10 * i) for i in range(6)]  # 10:00 to 10:50
    effects = handle(recorder, first)
    assert effects.ack == [] and recorder.buffered == 6  # held: nothing acknowledged before it is written
    second = [entry(i, minutes=60 + i) for i in range(6, 12)]  # 11:06 to 11:11: ten rows, the flush is due
    effects = handle(recorder, second)
    assert {e.id for e in effects.ack} == {e.id for e in first + second}
    predictions = store.read_predictions(*window(store))
    assert sorted(predictions["transaction_id"]) == sorted(f"t{i}" for i in range(12))
    assert predictions.set_index("transaction_id").loc["t3", "score"] == 0.003
    assert store.prediction_files(T0) == ["1000-0_1005-0"] and store.prediction_files(T0 + timedelta(hours=1))
    profile = store.read_window(*window(store))
    assert profile is not None
    assert set(profile.get_columns()) == {"amount_sum_1h", "channel", "txn_count_1h", "score"}


def test_entries_written_before_a_crash_are_acknowledged_without_a_second_copy(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path, "m")
    entries = [entry(i, minutes=i) for i in range(5)]
    recorder = TrafficRecorder(store, flush_seconds=3600)
    handle(recorder, entries)
    asyncio.run(recorder.flush())  # written; the crash came before the acknowledgement
    again = TrafficRecorder(store, flush_seconds=3600)
    effects = handle(again, [*entries, entry(5, minutes=5)])
    assert {e.id for e in effects.ack} == {e.id for e in entries}
    asyncio.run(again.flush())
    predictions = store.read_predictions(*window(store))
    assert sorted(predictions["transaction_id"]) == [f"t{i}" for i in range(6)]


def test_undecided_entries_pass_and_malformed_ones_are_dead_lettered(tmp_path: Path) -> None:
    recorder = TrafficRecorder(ProfileStore(tmp_path, "m"), flush_seconds=3600)
    broken = Entry(
        STREAM, b"2000-0", {b"schema": b"transaction.v1", b"source": b"scorer", b"transaction": b"[]"}
    )
    effects = handle(recorder, [entry(1, minutes=1, decided=False), broken])
    assert [e.id for e in effects.ack] == [b"1001-0"]
    assert [(e.id, reason.split(":")[0]) for e, reason in effects.dead_letters] == [
        (b"2000-0", "transaction")
    ]


def test_a_failed_write_keeps_its_rows_for_the_next_attempt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ProfileStore(tmp_path, "m")
    recorder = TrafficRecorder(store, flush_seconds=3600)
    handle(recorder, [entry(i, minutes=i) for i in range(3)])
    original = store.write_predictions

    def full_disk(*args: object, **kwargs: object) -> Path:
        raise OSError(28, "No space left on device", str(store.log_dir("predictions")))

    monkeypatch.setattr(store, "write_predictions", full_disk)
    assert asyncio.run(recorder.flush()) == [] and recorder.buffered == 3
    monkeypatch.setattr(store, "write_predictions", original)
    assert len(asyncio.run(recorder.flush())) == 3 and recorder.buffered == 0
    assert len(store.read_predictions(*window(store))) == 3


def test_shadow_scores_go_to_the_shadow_log_unprofiled_each_log_exactly_once(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path, "m")
    # The two streams' entry ids overlap: each log's files must name only its own stream's entries.
    decided = [entry(i, minutes=i) for i in range(4)]
    shadowed = [entry(i, minutes=i, shadow=True) for i in range(4)]
    recorder = TrafficRecorder(store, flush_seconds=3600)
    handle(recorder, [*decided[:2], *shadowed[:3]])
    asyncio.run(recorder.flush())
    again = TrafficRecorder(store, flush_seconds=3600)  # after a crash before the acknowledgement
    effects = handle(again, [*decided, *shadowed])
    assert [(e.stream, e.id) for e in effects.ack] == [
        (e.stream, e.id) for e in [*decided[:2], *shadowed[:3]]
    ]
    asyncio.run(again.flush())

    predictions = store.read_predictions(*window(store))
    shadow = store.read_predictions(*window(store), log="shadow")
    assert (
        sorted(predictions["transaction_id"])
        == sorted(shadow["transaction_id"])
        == [f"t{i}" for i in range(4)]
    )
    assert set(predictions["model_version"]) == {"3"} and set(shadow["model_version"]) == {"4"}
    profile = store.read_window(*window(store))
    assert profile is not None and profile.get_column("score").to_summary_dict()["counts/n"] == 4
