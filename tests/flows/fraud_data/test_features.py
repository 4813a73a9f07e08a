"""Feature computation: hand-computed values, brute-force equality, incremental equality, no leakage."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from flows.fraud_data.features import (
    ACTIVITY_DELAY,
    ACTIVITY_LOOKBACK,
    compute_customer_activity,
    compute_merchant_activity,
    compute_merchant_risk,
    risk_snapshots,
)

T0 = pd.Timestamp("2026-03-01 12:00", tz="UTC")


def _txns(rows: list[tuple[int, int, str, float]]) -> pd.DataFrame:
    """(customer, merchant, offset, amount) rows as validated transactions."""
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


def test_customer_activity_hand_computed() -> None:
    txns = _txns(
        [
            (1, 10, "0min", 10.0),
            (1, 11, "30min", 20.0),
            (1, 10, "90min", 60.0),  # windows are (t - w, t]: the one at 30 min is just out of 1 h
            (2, 10, "45min", 5.0),
            (1, 12, "2D", 100.0),  # out of the 24 h window, inside 7 d
        ]
    )
    out = compute_customer_activity(txns).set_index(
        txns.sort_values("event_timestamp")["transaction_id"].values
    )
    c1 = out[out["customer_id"] == 1].reset_index(drop=True)
    assert c1["txn_count_1h"].tolist() == [1, 2, 1, 1]
    assert c1["txn_count_24h"].tolist() == [1, 2, 3, 1]
    assert c1["txn_count_7d"].tolist() == [1, 2, 3, 4]
    assert c1["amount_sum_1h"].tolist() == [10.0, 30.0, 60.0, 100.0]
    assert c1["amount_mean_24h"].tolist() == [10.0, 15.0, 30.0, 100.0]
    assert c1["amount_mean_7d"].tolist() == [10.0, 15.0, 30.0, 47.5]
    assert c1["distinct_merchants_24h"].tolist() == [1, 2, 2, 1]
    lookback = ACTIVITY_LOOKBACK.total_seconds()
    assert c1["seconds_since_prev_txn"].tolist() == [lookback, 1800.0, 3600.0, 2 * 86400 - 5400.0]
    # Stamped just after the transaction: a training row at the transaction's own time cannot see it.
    first = txns.loc[0, "event_timestamp"]
    assert c1.loc[0, "event_timestamp"] == first + ACTIVITY_DELAY


def _brute_force_customer(txns: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, r in txns.iterrows():
        same = txns[txns["customer_id"] == r["customer_id"]]
        row = {"transaction_id": r["transaction_id"]}
        for name, w in {"1h": "1h", "24h": "24h", "7d": "7D"}.items():
            inw = same[
                (same["event_timestamp"] > r["event_timestamp"] - pd.Timedelta(w))
                & (same["event_timestamp"] <= r["event_timestamp"])
            ]
            row[f"txn_count_{name}"] = len(inw)
            row[f"amount_sum_{name}"] = round(inw["amount"].sum(), 2)
            if name == "24h":
                row["distinct_merchants_24h"] = inw["merchant_id"].nunique()
        rows.append(row)
    return pd.DataFrame(rows).set_index("transaction_id").sort_index()


def _random_txns(seed: int, n: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    offsets = np.sort(rng.integers(0, 10 * 86400, n))
    return pd.DataFrame(
        {
            "transaction_id": [f"r{seed}_{i}" for i in range(n)],
            "event_timestamp": (T0 + pd.to_timedelta(offsets, unit="s")).astype("datetime64[us, UTC]"),
            "customer_id": rng.integers(1, 15, n).astype(np.int64),
            "merchant_id": rng.integers(1, 6, n).astype(np.int64),
            "amount": np.round(rng.lognormal(3, 1, n), 2),
        }
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_customer_activity_matches_brute_force(seed: int) -> None:
    txns = _random_txns(seed)
    fast = compute_customer_activity(txns)
    fast.index = _ids_in_output_order(txns)
    expected = _brute_force_customer(txns)
    fast = fast.sort_index()
    for column in expected.columns:
        np.testing.assert_allclose(
            fast[column].to_numpy(float), expected[column].to_numpy(float), err_msg=column
        )


def _ids_in_output_order(txns: pd.DataFrame) -> list[str]:
    return txns.sort_values(["event_timestamp", "customer_id"], kind="stable")["transaction_id"].tolist()


def test_incremental_run_equals_full_run() -> None:
    txns = _random_txns(7, n=600)
    cut = txns["event_timestamp"].iloc[400]
    old, new = txns[txns["event_timestamp"] < cut], txns[txns["event_timestamp"] >= cut]
    history = old[old["event_timestamp"] >= cut - ACTIVITY_LOOKBACK]
    full = compute_customer_activity(txns)
    incremental = compute_customer_activity(new, history)
    expected = full[full["event_timestamp"] >= cut + ACTIVITY_DELAY].reset_index(drop=True)
    pd.testing.assert_frame_equal(incremental, expected)
    full_m = compute_merchant_activity(txns)
    inc_m = compute_merchant_activity(new, history)
    pd.testing.assert_frame_equal(
        inc_m, full_m[full_m["event_timestamp"] >= cut + ACTIVITY_DELAY].reset_index(drop=True)
    )


def test_future_transactions_do_not_change_past_features() -> None:
    """Leakage guard: appending later data must not alter any feature row already computed."""
    txns = _random_txns(11)
    later = _random_txns(12)
    later["event_timestamp"] = later["event_timestamp"] + pd.Timedelta("30D")
    before = compute_customer_activity(txns)
    after = compute_customer_activity(pd.concat([txns, later], ignore_index=True))
    pd.testing.assert_frame_equal(after.iloc[: len(before)].reset_index(drop=True), before)


def test_merchant_risk_uses_only_arrived_labels() -> None:
    labels = pd.DataFrame(
        {
            "merchant_id": np.array([1, 1, 1, 2], dtype=np.int64),
            "label_timestamp": pd.to_datetime(
                ["2026-03-01 10:00", "2026-03-02 10:00", "2026-03-05 10:00", "2026-03-02 11:00"], utc=True
            ),
            "is_fraud": [1, 0, 1, 0],
        }
    )
    snaps = pd.DatetimeIndex(pd.to_datetime(["2026-03-03", "2026-03-06"], utc=True))
    risk = compute_merchant_risk(labels, np.array([1, 2, 3]), snaps).set_index(
        ["merchant_id", "event_timestamp"]
    )
    # On 03-03 merchant 1 has two labels (one fraud); the fraud labelled on 03-05 is not yet known.
    assert risk.loc[(1, snaps[0]), "merchant_labeled_txn_30d"] == 2
    assert risk.loc[(1, snaps[1]), "merchant_labeled_txn_30d"] == 3
    prior = 1 / 3  # overall rate of the labels known on 03-03
    assert risk.loc[(1, snaps[0]), "merchant_fraud_rate_30d"] == pytest.approx(
        (1 + 20 * prior) / 22, abs=1e-6
    )
    # A merchant without labels reads as the overall rate.
    assert risk.loc[(3, snaps[0]), "merchant_fraud_rate_30d"] == pytest.approx(prior, abs=1e-6)
    assert risk.loc[(3, snaps[0]), "merchant_labeled_txn_30d"] == 0


def test_risk_snapshots_never_pass_as_of() -> None:
    as_of = pd.Timestamp("2026-03-05 15:30", tz="UTC")
    snaps = risk_snapshots(pd.Timestamp("2026-03-01 08:00", tz="UTC"), as_of, already_until=None)
    assert snaps[-1] == as_of and snaps.max() <= as_of
    assert list(snaps[:-1]) == list(pd.date_range("2026-03-02", "2026-03-05", freq="D", tz="UTC"))
    again = risk_snapshots(pd.Timestamp("2026-03-05", tz="UTC"), as_of, already_until=as_of)
    assert len(again) == 0
