"""Sliding windows declared on Feast fields: both evaluators equal a plain reference, and each other, exactly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.stream.windows import (
    MICROS,
    STAMP_DELAY,
    UNITS,
    EntityWindows,
    EventIndex,
    WindowDefinitionError,
    WindowedView,
    compute_windows,
    event_row,
    to_units,
)
from tests.fixtures.histories import T0, histories


def frame(rows: list[tuple[int, int, str | pd.Timedelta, float]]) -> pd.DataFrame:
    """(customer, merchant, offset, amount) rows as validated transactions, ids t0, t1, ..."""
    return pd.DataFrame(
        {
            "transaction_id": [f"t{i}" for i in range(len(rows))],
            "event_timestamp": pd.Series([T0 + pd.Timedelta(r[2]) for r in rows]).astype(
                "datetime64[us, UTC]"
            ),
            "customer_id": np.array([r[0] for r in rows], dtype=np.int64),
            "merchant_id": np.array([r[1] for r in rows], dtype=np.int64),
            "amount": np.array([r[3] for r in rows], dtype=np.float64),
        }
    )


def by_transaction(view: WindowedView, events: pd.DataFrame) -> pd.DataFrame:
    """compute_windows' rows indexed by the transaction each one is about."""
    rows = compute_windows(view, events)
    rows.index = events.sort_values(["event_timestamp", view.key], kind="stable")["transaction_id"].to_numpy()
    return rows


def reference(view: WindowedView, events: pd.DataFrame) -> pd.DataFrame:
    """The definition, one event at a time: the entity's events in ``(t - w, t]``, in arrival order for ties."""
    times = (events["event_timestamp"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta("1us")
    rows = {}
    for i in range(len(events)):
        key, t = events[view.key].iloc[i], int(times.iloc[i])
        mine = [j for j in range(len(events)) if events[view.key].iloc[j] == key]
        ordered = sorted(mine, key=lambda j: (int(times.iloc[j]), j))
        row = {}
        for f in view.features:
            if f.aggregation == "unix_time":
                row[f.name] = t // MICROS
                continue
            if f.aggregation == "seconds_since_previous":
                position = ordered.index(i)
                gap = (t - int(times.iloc[ordered[position - 1]])) / MICROS if position else f.window_seconds
                row[f.name] = min(gap, f.window_seconds)
                continue
            inside = [j for j in mine if t - f.window_us < int(times.iloc[j]) <= t]
            values = [events[f.column].iloc[j] for j in inside] if f.column else []
            if f.aggregation == "count":
                row[f.name] = len(inside)
            elif f.aggregation == "count_distinct":
                row[f.name] = len(set(values))
            else:
                total = float(sum(round(v * UNITS) for v in values))
                row[f.name] = (
                    total / UNITS if f.aggregation == "sum" else total / (len(inside) * float(UNITS))
                )
        rows[events["transaction_id"].iloc[i]] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def assert_same(actual: pd.DataFrame, expected: pd.DataFrame, view: WindowedView) -> None:
    names = [f.name for f in view.features]
    actual, expected = actual.loc[expected.index, names], expected[names]
    for name in names:
        assert actual[name].tolist() == expected[name].tolist(), name


def test_declared_views_parse(declared_views: dict[str, WindowedView]) -> None:
    customer, merchant = declared_views["customer_activity"], declared_views["merchant_activity"]
    assert customer.key == "customer_id" and merchant.key == "merchant_id"
    assert customer.horizon == pd.Timedelta("7D") and merchant.horizon == pd.Timedelta("24h")
    kinds = {f.name: (f.aggregation, f.column) for f in customer.features}
    assert kinds["distinct_merchants_24h"] == ("count_distinct", "merchant_id")
    assert kinds["amount_mean_7d"] == ("mean", "amount")
    assert customer.unit_columns == {"amount"}


def test_hand_computed(declared_views: dict[str, WindowedView]) -> None:
    view = declared_views["customer_activity"]
    events = frame(
        [
            (1, 10, "0min", 10.0),
            (1, 11, "30min", 20.0),
            (1, 10, "90min", 60.0),  # windows are (t - w, t]: the one at 30 min is just out of 1 h
            (2, 10, "45min", 5.0),
            (1, 12, "2D", 100.0),  # out of the 24 h window, inside 7 d
        ]
    )
    c1 = by_transaction(view, events).loc[["t0", "t1", "t2", "t4"]]
    assert c1["txn_count_1h"].tolist() == [1, 2, 1, 1]
    assert c1["txn_count_24h"].tolist() == [1, 2, 3, 1]
    assert c1["txn_count_7d"].tolist() == [1, 2, 3, 4]
    assert c1["amount_sum_1h"].tolist() == [10.0, 30.0, 60.0, 100.0]
    assert c1["amount_mean_24h"].tolist() == [10.0, 15.0, 30.0, 100.0]
    assert c1["amount_mean_7d"].tolist() == [10.0, 15.0, 30.0, 47.5]
    assert c1["distinct_merchants_24h"].tolist() == [1, 2, 2, 1]
    week = pd.Timedelta("7D").total_seconds()
    assert c1["seconds_since_prev_txn"].tolist() == [week, 1800.0, 3600.0, 2 * 86400 - 5400.0]
    # Stamped just after the transaction: a training row at the transaction's own time cannot see it.
    assert c1["event_timestamp"].iloc[0] == events["event_timestamp"].iloc[0] + STAMP_DELAY


def test_ten_digit_ids_give_the_same_features_as_small_ones(declared_views: dict[str, WindowedView]) -> None:
    """The bug a user found: key x time span overflowed int64, so large ids read other customers' events."""
    rng = np.random.default_rng(5)
    n = 20_000
    small = rng.integers(1, 3_000, n)
    big_ids = np.unique(rng.integers(10**9, 10**10, 4_000))[:3_000]
    events = pd.DataFrame(
        {
            "transaction_id": [f"x{i}" for i in range(n)],
            "event_timestamp": (
                T0 + pd.to_timedelta(np.sort(rng.integers(0, 10 * 86400, n)), unit="s")
            ).astype("datetime64[us, UTC]"),
            "customer_id": small,
            "merchant_id": rng.integers(1, 200, n),
            "amount": np.round(rng.lognormal(3, 1, n), 2),
        }
    )
    renamed = events.assign(customer_id=big_ids[small - 1], merchant_id=big_ids[-events["merchant_id"]])
    view = declared_views["customer_activity"]
    expected, actual = by_transaction(view, events), by_transaction(view, renamed)
    assert_same(actual, expected, view)
    assert (actual["distinct_merchants_24h"] > 0).all()


def test_a_run_with_history_equals_the_full_run(declared_views: dict[str, WindowedView]) -> None:
    """The pipeline computes new events with only their look-back as history: same rows as all at once."""
    rng = np.random.default_rng(7)
    n = 600
    events = pd.DataFrame(
        {
            "transaction_id": [f"r{i}" for i in range(n)],
            "event_timestamp": (
                T0 + pd.to_timedelta(np.sort(rng.integers(0, 20 * 86400, n)), unit="s")
            ).astype("datetime64[us, UTC]"),
            "customer_id": rng.integers(1, 15, n),
            "merchant_id": rng.integers(1, 6, n),
            "amount": np.round(rng.lognormal(3, 1, n), 2),
        }
    )
    cut = events["event_timestamp"].iloc[400]
    for view in declared_views.values():
        old, new = events[events["event_timestamp"] < cut], events[events["event_timestamp"] >= cut]
        history = old[old["event_timestamp"] >= cut - view.horizon]
        full = compute_windows(view, events)
        expected = full[full["event_timestamp"] >= cut + STAMP_DELAY].reset_index(drop=True)
        pd.testing.assert_frame_equal(compute_windows(view, new, history), expected)
        # Leakage guard: later events never change a row already computed.
        later = events.assign(
            transaction_id=events["transaction_id"] + "+",
            event_timestamp=events["event_timestamp"] + pd.Timedelta("30D"),
        )
        pd.testing.assert_frame_equal(
            compute_windows(view, pd.concat([events, later])).iloc[: len(full)], full
        )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=histories())
def test_batch_windows_equal_the_definition(events: pd.DataFrame, declared_views: dict) -> None:
    for view in declared_views.values():
        assert_same(by_transaction(view, events), reference(view, events), view)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=histories(), seed=st.integers(0, 2**32 - 1))
def test_events_in_any_order_and_repeated_end_in_the_batch_row_of_the_newest(
    events: pd.DataFrame, seed: int, declared_views: dict
) -> None:
    """Late, out-of-order and duplicated events: each entity ends where the batch says its newest event is."""
    rng = np.random.default_rng(seed)
    arrival = rng.permutation(np.r_[np.arange(len(events)), rng.integers(0, len(events), len(events) // 3)])
    for view in declared_views.values():
        batch = compute_windows(view, events)
        newest = batch.groupby(view.key).tail(1).set_index(view.key)
        state: dict[int, EntityWindows] = {}
        for i in arrival:
            row = events.iloc[int(i)]
            windows = state.setdefault(int(row[view.key]), EntityWindows(view))
            windows.add(row["transaction_id"], _us(row["event_timestamp"]), event_row(view, row))
        for key, windows in state.items():
            expected = newest.loc[key]
            assert windows.features() == {f.name: expected[f.name] for f in view.features}
            assert windows.stamp_us() == _us(expected["event_timestamp"])


def test_in_order_stream_equals_every_batch_row(declared_views: dict[str, WindowedView]) -> None:
    """After each event, the incremental state is exactly the batch row of that event (a generated month)."""
    from flows.fraud_data.generator import GeneratorConfig, generate_raw_data

    data = generate_raw_data(
        GeneratorConfig(n_transactions=6_000, n_customers=150, n_merchants=20, start=T0, days=30, seed=3)
    )
    events = data.transactions.sort_values("event_timestamp", kind="stable").reset_index(drop=True)
    for view in declared_views.values():
        rows = by_transaction(view, events)
        names = [f.name for f in view.features]
        state: dict[int, EntityWindows] = {}
        for row in events.itertuples(index=False):
            key = getattr(row, view.key)
            windows = state.setdefault(key, EntityWindows(view))
            assert windows.add(row.transaction_id, _us(row.event_timestamp), event_row(view, row._asdict()))
            expected = rows.loc[row.transaction_id]
            assert windows.features() == {name: expected[name] for name in names}, (view.name, key)


def test_state_keeps_only_what_the_windows_need(declared_views: dict[str, WindowedView]) -> None:
    """A merchant at 200 transactions a second for two hours holds one day at most, and each event is O(1)."""
    view = declared_views["merchant_activity"]
    windows = EntityWindows(view)
    step = MICROS // 200
    for i in range(200 * 7_200):
        windows.add(f"m{i}", i * step, {"amount": 1_000_000})
    assert windows.features()["merchant_txn_count_1h"] == 200 * 3_600
    assert windows.features()["merchant_txn_count_24h"] == 200 * 7_200
    # Two days later only the events of the last day are kept (pruned in blocks).
    for i in range(10):
        windows.add(f"late{i}", (2 * 86_400 + 7_200) * MICROS + i, {"amount": 2_000_000})
    assert len(windows) <= 10 + EntityWindows.PRUNE_BLOCK
    assert windows.features()["merchant_txn_count_24h"] == 10
    assert windows.features()["merchant_amount_mean_24h"] == 2.0


def test_repeated_and_too_old_events_change_nothing(declared_views: dict[str, WindowedView]) -> None:
    view = declared_views["customer_activity"]
    windows = EntityWindows(view)
    assert windows.add("a", 10 * 86_400 * MICROS, {"amount": to_units([5.0])[0], "merchant_id": 1})
    before = windows.features()
    assert not windows.add("a", 10 * 86_400 * MICROS, {"amount": 999, "merchant_id": 2})
    assert not windows.add("old", 2 * 86_400 * MICROS, {"amount": 1, "merchant_id": 3})
    assert windows.features() == before


def test_unknown_aggregations_and_wrong_types_are_refused() -> None:
    from feast import Entity, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64, Int64

    def view(*fields: Field) -> FeatureView:
        return FeatureView(
            name="v",
            entities=[Entity(name="e", join_keys=["k"], value_type=ValueType.INT64)],
            schema=list(fields),
            source=FileSource(path="x.parquet", timestamp_field="event_timestamp"),
            tags={"aggregates": "transactions"},
        )

    cases = {
        "tag 'aggregation' is 'median'": Field(name="f", dtype=Float64, tags={"aggregation": "median"}),
        "needs a 'column' tag": Field(name="f", dtype=Float64, tags={"aggregation": "sum", "window": "1h"}),
        "gives Int64, declared DOUBLE": Field(
            name="f", dtype=Float64, tags={"aggregation": "count", "window": "1h"}
        ),
        "is not a duration": Field(name="f", dtype=Int64, tags={"aggregation": "count", "window": "often"}),
    }
    for message, field in cases.items():
        with pytest.raises(WindowDefinitionError, match=message):
            WindowedView.from_feature_view(view(field))


def test_index_refuses_sizes_that_would_overflow() -> None:
    with pytest.raises(OverflowError, match="shards"):
        EventIndex(np.zeros(3, np.int64), np.arange(3), n_codes=2**62)


def _us(timestamp: pd.Timestamp) -> int:
    return pd.Timestamp(timestamp).value // 1_000  # .value is nanoseconds whatever the unit
