"""Windowed features computed per shard of entities equal the single-process computation, to the bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flows.feature_store.offline_store import batch_files, partition_files, read_partitions, write_partitions
from flows.feature_store.sharding import (
    EventSources,
    read_shard,
    scatter_events,
    shard_count,
    shard_number,
    shard_of,
)
from services.stream.windows import WindowedView, compute_windows
from tests.fixtures.feature_repo import declared_windowed_views

START = pd.Timestamp("2026-03-01", tz="UTC")
DAYS = 12
NEW_FROM = START + pd.Timedelta(days=9)
BUSY_CUSTOMER = 7  # an entity with events in every daily partition, history and new alike


def generated_events(seed: int = 3) -> pd.DataFrame:
    """Transactions over DAYS days: skewed customers and merchants, repeated times and values, ties."""
    rng = np.random.default_rng(seed)
    n = 6_000
    customers = rng.zipf(1.6, n) % 300 + 1  # a few heavy entities: shards of uneven size
    customers[: DAYS * 4] = BUSY_CUSTOMER
    seconds = rng.integers(0, DAYS * 86_400, n)
    seconds[: DAYS * 4] = np.arange(DAYS * 4) * 21_600  # the busy customer, every six hours
    # Ties on entity and time: a second event of the same customer at the same microsecond.
    customers[100:110], seconds[100:110] = customers[90:100], seconds[90:100]
    frame = pd.DataFrame(
        {
            "transaction_id": [f"tx-{i:05d}" for i in range(n)],
            "event_timestamp": (START + pd.to_timedelta(seconds, unit="s")).as_unit("us"),
            "customer_id": customers.astype(np.int64),
            "merchant_id": (rng.zipf(1.4, n) % 60 + 1).astype(np.int64),
            "amount": np.round(rng.lognormal(3, 1, n), 2),
            "channel": rng.choice(["chip", "online", "contactless"], n),
        }
    )
    return frame.sort_values("event_timestamp", kind="stable").reset_index(drop=True)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    """A validated store: two earlier batches of history, then a run of two new batches, the second in parts."""
    events = generated_events()
    table = tmp_path_factory.mktemp("validated") / "transactions"
    old, new = events[events["event_timestamp"] < NEW_FROM], events[events["event_timestamp"] >= NEW_FROM]
    write_partitions(old.iloc[::2], table, "h-1")
    write_partitions(old.iloc[1::2], table, "h-2")
    first, second = new.iloc[: len(new) // 2], new.iloc[len(new) // 2 :]
    size = len(second) // 3 + 1
    # A tie across a part boundary: the next part starts with another event of the same entity at the same time.
    twin = second.iloc[[size - 1]].assign(transaction_id="twin", amount=1.0)
    second = pd.concat([second.iloc[:size], twin, second.iloc[size:]], ignore_index=True)
    write_partitions(first, table, "run-a")
    for part, begin in enumerate(range(0, len(second), size)):
        write_partitions(second.iloc[begin : begin + size], table, "run-b", part=part)
    return table, old, pd.concat([first, second], ignore_index=True)


def single_process(
    view: WindowedView, table: Path, new: pd.DataFrame, lookback: pd.Timedelta
) -> pd.DataFrame:
    """Today's computation: the new rows in ingestion order and the look-back read whole."""
    history = read_partitions(table, since=NEW_FROM - lookback)
    return compute_windows(view, new, history[history["event_timestamp"] < NEW_FROM])


def sharded(
    view: WindowedView, table: Path, shards: int, work: Path, lookback: pd.Timedelta
) -> list[pd.DataFrame]:
    new_files = [*batch_files(table, {"run-a"}), *batch_files(table, {"run-b"})]
    history_files = [f for f in partition_files(table, since=NEW_FROM - lookback) if f not in new_files]
    sources = EventSources(new_files, history_files, NEW_FROM - lookback, NEW_FROM)
    files = scatter_events([view], sources, shards, work)[view.name]
    return [compute_windows(view, *read_shard(path)) for path in files]


@pytest.mark.parametrize("view_name", ["customer_activity", "merchant_activity"])
@pytest.mark.parametrize("shards", [1, 3, 8])
def test_shards_together_equal_the_single_process_computation(
    store: tuple[Path, pd.DataFrame, pd.DataFrame], tmp_path: Path, view_name: str, shards: int
) -> None:
    table, _, new = store
    view = declared_windowed_views()[view_name]
    expected = single_process(view, table, new, view.horizon)

    parts = sharded(view, table, shards, tmp_path, view.horizon)
    got = pd.concat(parts, ignore_index=True).sort_values(["event_timestamp", view.key], kind="stable")

    pd.testing.assert_frame_equal(got.reset_index(drop=True), expected, check_exact=True)
    assert len(expected) == len(new)


def test_shards_are_uneven_and_each_reads_only_its_own_entities(
    store: tuple[Path, pd.DataFrame, pd.DataFrame], tmp_path: Path
) -> None:
    table, old, _ = store
    view = declared_windowed_views()["customer_activity"]
    files = scatter_events(
        [view],
        EventSources(
            [*batch_files(table, {"run-a"}), *batch_files(table, {"run-b"})],
            [f for f in partition_files(table) if f not in batch_files(table, {"run-a", "run-b"})],
            NEW_FROM - view.horizon,
            NEW_FROM,
        ),
        4,
        tmp_path,
    )[view.name]

    sizes = []
    for path in files:
        shard_new, shard_history = read_shard(path)
        keys = pd.concat([shard_new, shard_history])[view.key].to_numpy()
        assert set(shard_of(keys, 4)) == {shard_number(path)}
        assert (
            shard_history["event_timestamp"]
            .between(NEW_FROM - view.horizon, NEW_FROM, inclusive="left")
            .all()
        )
        sizes.append(len(keys))
    assert max(sizes) > 1.5 * min(sizes)
    busy_days = old.loc[old["customer_id"] == BUSY_CUSTOMER, "event_timestamp"].dt.floor("D").nunique()
    assert busy_days == 9  # the busy customer's history crosses every earlier partition


def test_a_long_look_back_crosses_every_partition_and_still_matches(
    store: tuple[Path, pd.DataFrame, pd.DataFrame], tmp_path: Path
) -> None:
    """With a look-back reaching the first day, every history partition feeds the shards."""
    table, _, new = store
    view = declared_windowed_views()["customer_activity"]
    lookback = pd.Timedelta(days=DAYS)
    expected = single_process(view, table, new, lookback)
    got = pd.concat(sharded(view, table, 5, tmp_path, lookback), ignore_index=True)
    pd.testing.assert_frame_equal(
        got.sort_values(["event_timestamp", view.key], kind="stable").reset_index(drop=True), expected
    )


def test_shard_count_bounds_the_events_per_shard() -> None:
    assert shard_count(0, 10) == 1
    assert shard_count(10, 10) == 1
    assert shard_count(11, 10) == 2
    spread = np.bincount(shard_of(np.arange(1, 100_001), 7), minlength=7)
    assert spread.min() > 0.95 * spread.max()  # consecutive ids spread evenly
