"""Feature tables of the fraud domain the transaction windows do not cover, computed point-in-time safe.

The activity views are sliding windows declared on their Feast fields and computed generically
(``services/stream/windows.py``). What is left here is fraud-specific, and each table's ``event_timestamp``
is the moment its values became known:
- merchant risk rows are daily snapshots built only from labels that had arrived by the snapshot;
- profile rows are stamped when the account or merchant was created.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from services.stream.windows import micros

RISK_WINDOW = pd.Timedelta("30D")
# Pseudo-count pulling a merchant with few labels towards the overall fraud rate.
RISK_PRIOR_WEIGHT = 20.0


def compute_merchant_risk(
    labels: pd.DataFrame | Iterable[pd.DataFrame], merchant_ids: np.ndarray, snapshots: pd.DatetimeIndex
) -> pd.DataFrame:
    """Smoothed 30-day fraud rate per merchant at each snapshot, from labels that had arrived by then.

    ``labels`` is a frame, or frames read one after another (``iter_labels``), with ``merchant_id``,
    ``label_timestamp`` and ``is_fraud``; rows with a null label are ignored. Labels are counted per merchant
    between consecutive window bounds as they are read, so memory grows with merchants times snapshots and never
    with the labels. Rows come by snapshot, then merchant id.
    """
    if len(snapshots) == 0 or len(merchant_ids) == 0:
        return _empty_risk()
    merchants = np.unique(np.asarray(merchant_ids, dtype=np.int64))
    snap_us = np.unique(np.asarray(snapshots.as_unit("us").asi8, dtype=np.int64))
    window_us = int(RISK_WINDOW / pd.Timedelta("1us"))
    # Every window is (snapshot - 30 days, snapshot]: with its two ends among the bounds, a window's count is a
    # difference of running totals over the bins the bounds cut time into, exact to the microsecond.
    bounds = np.unique(np.concatenate([snap_us - window_us, snap_us]))
    totals = _LabelTotals(len(merchants), len(bounds) + 1)
    for frame in [labels] if isinstance(labels, pd.DataFrame) else labels:
        known = frame.dropna(subset=["label_timestamp", "is_fraud"])
        if len(known):
            totals.add(
                np.searchsorted(merchants, known["merchant_id"].to_numpy(np.int64)),
                known["merchant_id"].to_numpy(np.int64),
                merchants,
                np.searchsorted(bounds, micros(known["label_timestamp"]), side="left"),
                known["is_fraud"].to_numpy(np.int64),
            )
    lo, hi = np.searchsorted(bounds, snap_us - window_us), np.searchsorted(bounds, snap_us)
    n_running = np.cumsum(totals.n, axis=1, dtype=np.int32)
    fraud_running = np.cumsum(totals.fraud, axis=1, dtype=np.int32)
    n = (n_running[:, hi] - n_running[:, lo]).T.astype(np.int64).ravel()
    fraud = (fraud_running[:, hi] - fraud_running[:, lo]).T.astype(np.float64).ravel()
    # The prior is the overall rate in the same window, so a merchant without labels reads as average.
    all_n, all_fraud = np.cumsum(totals.all_n), np.cumsum(totals.all_fraud)
    prior = (all_fraud[hi] - all_fraud[lo]).astype(np.float64) / np.maximum(all_n[hi] - all_n[lo], 1)
    prior = np.repeat(prior, len(merchants))
    rate = (fraud + RISK_PRIOR_WEIGHT * prior) / (n + RISK_PRIOR_WEIGHT)
    return pd.DataFrame(
        {
            "merchant_id": np.tile(merchants, len(snap_us)),
            "event_timestamp": pd.to_datetime(
                np.repeat(snap_us, len(merchants)), unit="us", utc=True
            ).as_unit("us"),
            "merchant_fraud_rate_30d": np.round(rate, 6),
            "merchant_labeled_txn_30d": n,
        }
    )


class _LabelTotals:
    """Labels and frauds per merchant and per bin of label time, and over all merchants per bin."""

    def __init__(self, n_merchants: int, n_bins: int) -> None:
        # int32 per merchant and bin: a merchant would need two billion labels in one bin to overflow it.
        self.n = np.zeros((n_merchants, n_bins), np.int32)
        self.fraud = np.zeros((n_merchants, n_bins), np.int32)
        self.all_n = np.zeros(n_bins, np.int64)
        self.all_fraud = np.zeros(n_bins, np.int64)

    def add(
        self, slot: np.ndarray, ids: np.ndarray, merchants: np.ndarray, bins: np.ndarray, fraud: np.ndarray
    ) -> None:
        n_bins = self.n.shape[1]
        self.all_n += np.bincount(bins, minlength=n_bins)
        self.all_fraud += np.bincount(bins, weights=fraud, minlength=n_bins).astype(np.int64)
        # A label of a merchant not in the reference counts towards the prior only.
        listed = slot < len(merchants)
        listed[listed] = merchants[slot[listed]] == ids[listed]
        cells = slot[listed] * n_bins + bins[listed]
        for counts, chosen in ((self.n, cells), (self.fraud, cells[fraud[listed] == 1])):
            where, how_many = np.unique(chosen, return_counts=True)
            counts.reshape(-1)[where] += how_many.astype(np.int32)


def risk_snapshots(
    new_start: pd.Timestamp, as_of: pd.Timestamp, already_until: pd.Timestamp | None
) -> pd.DatetimeIndex:
    """Daily snapshot times a run must add: each midnight after what exists, up to and including ``as_of``."""
    first = (already_until or new_start).floor("D") + pd.Timedelta("1D")
    days = pd.date_range(first, as_of.floor("D"), freq="D", tz="UTC")
    # The freshest snapshot is the data's own "now", so the online store is current after every run.
    if len(days) == 0 or days[-1] != as_of:
        days = days.append(pd.DatetimeIndex([as_of]))
    if already_until is not None:
        days = days[days > already_until]
    return days


def compute_customer_profile(customers: pd.DataFrame) -> pd.DataFrame:
    """Static cardholder attributes, known from account creation."""
    return pd.DataFrame(
        {
            "customer_id": customers["customer_id"].astype(np.int64),
            "event_timestamp": customers["account_created_at"].astype("datetime64[us, UTC]"),
            "home_region": customers["home_region"].astype(object),
            "card_type": customers["card_type"].astype(object),
            "credit_limit": customers["credit_limit"].astype(np.float64),
            "account_created_unix": micros(customers["account_created_at"]) // 1_000_000,
        }
    )


def compute_merchant_profile(merchants: pd.DataFrame) -> pd.DataFrame:
    """Static merchant attributes, known from onboarding."""
    return pd.DataFrame(
        {
            "merchant_id": merchants["merchant_id"].astype(np.int64),
            "event_timestamp": merchants["onboarded_at"].astype("datetime64[us, UTC]"),
            "merchant_category": merchants["merchant_category"].astype(object),
            "merchant_region": merchants["merchant_region"].astype(object),
        }
    )


def _empty_risk() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "merchant_id": pd.Series(dtype=np.int64),
            "event_timestamp": pd.Series(dtype="datetime64[us, UTC]"),
            "merchant_fraud_rate_30d": pd.Series(dtype=np.float64),
            "merchant_labeled_txn_30d": pd.Series(dtype=np.int64),
        }
    )
