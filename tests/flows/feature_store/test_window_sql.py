"""The SQL evaluator of the windowed views equals ``compute_windows`` to the bit, whatever the history."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flows.feature_store.window_sql import compute_windows_sql
from services.stream.windows import WindowedView, compute_windows
from tests.fixtures.histories import T0, histories


def assert_identical(sql: pd.DataFrame, numpy: pd.DataFrame) -> None:
    """Same rows, order and dtypes; floats compared as their bytes, so even a last-bit difference fails."""
    pd.testing.assert_frame_equal(sql, numpy, check_exact=True)
    for column in numpy.select_dtypes("float").columns:
        assert sql[column].to_numpy().tobytes() == numpy[column].to_numpy().tobytes(), column


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=histories(), split=st.floats(0, 1), seed=st.integers(0, 2**32 - 1))
def test_sql_rows_equal_compute_windows_with_and_without_history(
    events: pd.DataFrame, split: float, seed: int, declared_views: dict[str, WindowedView]
) -> None:
    rng = np.random.default_rng(seed)
    cut = int(len(events) * split)
    history = events.iloc[:cut]
    # New rows in any order, and some that the history holds already (a re-ingested batch).
    new = pd.concat([events.iloc[cut:], history.sample(frac=0.3, random_state=seed)])
    new = new.iloc[rng.permutation(len(new))].reset_index(drop=True)
    for view in declared_views.values():
        assert_identical(compute_windows_sql(view, events), compute_windows(view, events))
        assert_identical(compute_windows_sql(view, new, history), compute_windows(view, new, history))


def test_a_generated_month_and_missing_values(declared_views: dict[str, WindowedView]) -> None:
    from flows.fraud_data.generator import GeneratorConfig, generate_raw_data

    data = generate_raw_data(
        GeneratorConfig(n_transactions=20_000, n_customers=300, n_merchants=30, start=T0, days=30, seed=4)
    )
    events = data.transactions.sample(frac=1.0, random_state=1).reset_index(drop=True)
    history, new = events.iloc[:8_000], events.iloc[8_000:]
    for view in declared_views.values():
        assert_identical(compute_windows_sql(view, new, history), compute_windows(view, new, history))
    # A missing merchant counts as one value of the distinct count, in both.
    gaps = events.astype({"merchant_id": "Float64"})
    gaps.loc[::7, "merchant_id"] = pd.NA
    customers = declared_views["customer_activity"]
    assert_identical(compute_windows_sql(customers, gaps), compute_windows(customers, gaps))
