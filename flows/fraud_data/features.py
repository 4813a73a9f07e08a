"""Feature tables of the fraud domain the transaction windows do not cover, computed point-in-time safe.

The activity views are sliding windows declared on their Feast fields and computed generically
(``services/stream/windows.py``). What is left here is fraud-specific, and each table's ``event_timestamp``
is the moment its values became known:
- merchant risk rows are daily snapshots built only from labels that had arrived by the snapshot;
- profile rows are stamped when the account or merchant was created.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from services.stream.windows import EventIndex, micros

RISK_WINDOW = pd.Timedelta("30D")
# Pseudo-count pulling a merchant with few labels towards the overall fraud rate.
RISK_PRIOR_WEIGHT = 20.0


def compute_merchant_risk(
    labels: pd.DataFrame, merchant_ids: np.ndarray, snapshots: pd.DatetimeIndex
) -> pd.DataFrame:
    """Smoothed 30-day fraud rate per merchant at each snapshot, from labels that had arrived by then.

    ``labels`` has ``merchant_id``, ``label_timestamp`` and ``is_fraud``; rows with a null label are ignored.
    """
    known = labels.dropna(subset=["label_timestamp", "is_fraud"])
    if len(snapshots) == 0 or len(merchant_ids) == 0:
        return _empty_risk()
    window_us = int(RISK_WINDOW / pd.Timedelta("1us"))
    snap_us = np.asarray(snapshots.as_unit("us").asi8, dtype=np.int64)
    label_us = micros(known["label_timestamp"]) if len(known) else np.zeros(0, np.int64)
    merchant_ids = np.asarray(merchant_ids, dtype=np.int64)
    codes, uniques = pd.factorize(np.concatenate([known["merchant_id"].to_numpy(np.int64), merchant_ids]))
    index = EventIndex(codes[: len(known)], label_us, len(uniques))
    frauds = known["is_fraud"].to_numpy(np.float64)
    cumulative = np.concatenate([[0.0], np.cumsum(frauds[index.order])])

    grid_m = np.repeat(merchant_ids, len(snap_us))
    grid_codes = np.repeat(codes[len(known) :], len(snap_us))
    grid_t = np.tile(snap_us, len(merchant_ids))
    left, right = index.upto(grid_codes, grid_t - window_us), index.upto(grid_codes, grid_t)
    n = (right - left).astype(np.int64)
    fraud = cumulative[right] - cumulative[left]
    # The prior is the overall rate in the same window, so a merchant without labels reads as average.
    overall = EventIndex(np.zeros(len(label_us), np.int64), label_us, 1)
    all_frauds = np.concatenate([[0.0], np.cumsum(frauds[overall.order])])
    zeros = np.zeros(len(snap_us), np.int64)
    a_left, a_right = overall.upto(zeros, snap_us - window_us), overall.upto(zeros, snap_us)
    prior = (all_frauds[a_right] - all_frauds[a_left]) / np.maximum(a_right - a_left, 1)
    prior = np.tile(prior, len(merchant_ids))
    rate = (fraud + RISK_PRIOR_WEIGHT * prior) / (n + RISK_PRIOR_WEIGHT)
    frame = pd.DataFrame(
        {
            "merchant_id": grid_m,
            "event_timestamp": pd.to_datetime(grid_t, unit="us", utc=True).as_unit("us"),
            "merchant_fraud_rate_30d": np.round(rate, 6),
            "merchant_labeled_txn_30d": n,
        }
    )
    return frame.sort_values(["event_timestamp", "merchant_id"], kind="stable").reset_index(drop=True)


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
