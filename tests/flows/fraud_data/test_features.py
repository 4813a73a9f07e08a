"""Merchant risk snapshots: only labels that had arrived count; large ids are handled exactly.

The activity windows are tested with their generic evaluators (tests/services/stream/test_windows.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from flows.fraud_data.features import compute_merchant_risk, risk_snapshots

T0 = pd.Timestamp("2026-03-01 12:00", tz="UTC")


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


def test_merchant_risk_is_the_same_for_any_merchant_ids() -> None:
    """Ids up to 2**62 give the rates small ids give (keys are never multiplied into a sort key)."""
    rng = np.random.default_rng(9)
    n = 5_000
    small = rng.integers(1, 300, n)
    labels = pd.DataFrame(
        {
            "merchant_id": small,
            "label_timestamp": T0 + pd.to_timedelta(rng.integers(0, 60 * 86400, n), unit="s"),
            "is_fraud": rng.integers(0, 2, n),
        }
    )
    snaps = pd.date_range(T0 + pd.Timedelta("10D"), periods=40, freq="D")
    large = np.unique(rng.integers(2**61, 2**62, 400))[:300]
    expected = compute_merchant_risk(labels, np.arange(1, 300), snaps)
    actual = compute_merchant_risk(labels.assign(merchant_id=large[small - 1]), large[:299], snaps)
    columns = ["merchant_fraud_rate_30d", "merchant_labeled_txn_30d"]
    order = ["event_timestamp", "merchant_id"]
    expected = expected.assign(merchant_id=large[expected["merchant_id"] - 1]).sort_values(order)
    pd.testing.assert_frame_equal(
        actual.sort_values(order)[columns].reset_index(drop=True), expected[columns].reset_index(drop=True)
    )


def brute_force_risk(labels: pd.DataFrame, merchants: np.ndarray, snaps: pd.DatetimeIndex) -> pd.DataFrame:
    """Each merchant's and each snapshot's window (snapshot - 30 days, snapshot] counted label by label."""
    known = labels.dropna(subset=["label_timestamp", "is_fraud"])
    rows = []
    for snap in snaps:
        inside = known.loc[
            (known["label_timestamp"] > snap - pd.Timedelta("30D")) & (known["label_timestamp"] <= snap)
        ]
        prior = float(inside["is_fraud"].sum()) / max(len(inside), 1)
        for merchant in sorted(merchants):
            mine = inside.loc[inside["merchant_id"] == merchant]
            n = len(mine)
            rate = (float(mine["is_fraud"].sum()) + 20.0 * prior) / (n + 20.0)
            rows.append((merchant, snap, round(rate, 6), n))
    return pd.DataFrame(
        rows,
        columns=["merchant_id", "event_timestamp", "merchant_fraud_rate_30d", "merchant_labeled_txn_30d"],
    )


def test_merchant_risk_read_in_chunks_equals_every_window_counted_label_by_label() -> None:
    """Labels on a window's bounds (30 days before a snapshot, and at it), null labels, merchants missing from
    the reference and labels after the last snapshot: the rates are the brute force's, read whole or in chunks."""
    rng = np.random.default_rng(4)
    snaps = pd.date_range(T0 + pd.Timedelta("31D"), periods=6, freq="D").append(
        pd.DatetimeIndex([T0 + pd.Timedelta("36D 7h")])
    )
    n = 3_000
    times = T0 + pd.to_timedelta(rng.integers(0, 40 * 86400, n), unit="s")
    on_bounds = np.concatenate([snaps - pd.Timedelta("30D"), snaps]).repeat(3)
    labels = pd.DataFrame(
        {
            "merchant_id": rng.integers(1, 40, n + len(on_bounds)),
            "label_timestamp": pd.DatetimeIndex(times).append(pd.DatetimeIndex(on_bounds)),
            "is_fraud": rng.integers(0, 2, n + len(on_bounds)).astype("float64"),
        }
    )
    labels.loc[rng.choice(len(labels), 50, replace=False), "is_fraud"] = np.nan
    merchants = np.arange(5, 35)  # merchants 1-4 and 35-39 count only towards the prior

    expected = brute_force_risk(labels, merchants, snaps)
    whole = compute_merchant_risk(labels, merchants, snaps)
    chunked = compute_merchant_risk(
        (labels.iloc[begin : begin + 700] for begin in range(0, len(labels), 700)), merchants[::-1], snaps
    )

    pd.testing.assert_frame_equal(whole, expected, check_dtype=False, check_exact=True)
    pd.testing.assert_frame_equal(chunked, whole, check_exact=True)
    assert expected["merchant_labeled_txn_30d"].min() > 0
