"""Feature tables of the fraud domain, computed vectorized and point-in-time safe from validated raw data.

Each table's ``event_timestamp`` is the moment its values became known:
- activity rows are stamped ``ACTIVITY_DELAY`` after the transaction they include, so a training row at a
  transaction's time sees the state after the *previous* transaction, which is exactly what the online
  store holds when that transaction is scored;
- merchant risk rows are daily snapshots built only from labels that had arrived by the snapshot;
- profile rows are stamped when the account or merchant was created.

Windows are computed with sorted composite keys and ``searchsorted`` (no per-row Python, no groupby-rolling).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

ACTIVITY_DELAY = pd.Timedelta("1ms")
CUSTOMER_WINDOWS = {"1h": pd.Timedelta("1h"), "24h": pd.Timedelta("24h"), "7d": pd.Timedelta("7D")}
MERCHANT_WINDOWS = {"1h": pd.Timedelta("1h"), "24h": pd.Timedelta("24h")}
# Longest look-back any table needs: how much validated history an incremental run must read.
ACTIVITY_LOOKBACK = pd.Timedelta("7D")
RISK_WINDOW = pd.Timedelta("30D")
# Pseudo-count pulling a merchant with few labels towards the overall fraud rate.
RISK_PRIOR_WEIGHT = 20.0


def _micros(ts: pd.Series) -> np.ndarray:
    return pd.DatetimeIndex(ts).tz_convert("UTC").as_unit("us").asi8


class _KeyedTimeline:
    """Events sorted by (key, time), queried for how many fall in a half-open time range per key."""

    def __init__(self, keys: np.ndarray, times_us: np.ndarray, span_us: int) -> None:
        self.stride = np.int64(span_us)
        self.composite = keys.astype(np.int64) * self.stride + times_us
        order = np.argsort(self.composite, kind="stable")
        self.order = order
        self.sorted = self.composite[order]

    def count_upto(self, keys: np.ndarray, times_us: np.ndarray) -> np.ndarray:
        """Events with the same key at or before each time."""
        lo = np.searchsorted(self.sorted, keys.astype(np.int64) * self.stride, side="left")
        hi = np.searchsorted(self.sorted, keys.astype(np.int64) * self.stride + times_us, side="right")
        return hi - lo

    def window_bounds(
        self, keys: np.ndarray, times_us: np.ndarray, window_us: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Sorted-index bounds of the events with the same key in ``(t - window, t]``."""
        right = keys.astype(np.int64) * self.stride + times_us
        return (
            np.searchsorted(self.sorted, right - window_us, side="right"),
            np.searchsorted(self.sorted, right, side="right"),
        )


def _time_span(*times: np.ndarray) -> tuple[int, int]:
    lo = min(int(t.min()) for t in times if len(t))
    hi = max(int(t.max()) for t in times if len(t))
    longest_window = int(RISK_WINDOW / pd.Timedelta("1us"))
    return lo, hi - lo + 2 * longest_window + 1


def _rolling_activity(
    events: pd.DataFrame, key: str, windows: dict[str, pd.Timedelta]
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, int]:
    """Counts and amount sums over each window for every event (itself included), with its keys and times."""
    keys = events[key].to_numpy(np.int64)
    times = _micros(events["event_timestamp"])
    t0, span = _time_span(times)
    times = times - t0
    timeline = _KeyedTimeline(keys, times, span)
    amounts = events["amount"].to_numpy(np.float64)[timeline.order]
    cumulative = np.concatenate([[0.0], np.cumsum(amounts)])
    out: dict[str, np.ndarray] = {}
    for name, window in windows.items():
        left, right = timeline.window_bounds(keys, times, int(window / pd.Timedelta("1us")))
        out[f"count_{name}"] = (right - left).astype(np.int64)
        out[f"sum_{name}"] = cumulative[right] - cumulative[left]
    return out, keys, times, span


def _distinct_in_window(
    customers: np.ndarray,
    merchants: np.ndarray,
    times: np.ndarray,
    span: int,
    count: np.ndarray,
    window_us: int,
) -> np.ndarray:
    """Distinct merchants per customer in ``(t - w, t]``.

    An event is the first of its (customer, merchant) pair inside the window exactly when the pair's previous
    event is at or before ``t - w``; so distinct = count - #{events j <= t whose previous same-pair event p_j
    is after t - w} = count - (A(t) - B(t)), with A counting events that have a predecessor and B those whose
    ``max(j, p_j + w)`` is at or before t.
    """
    pair_order = np.lexsort((times, merchants, customers))
    c, m, t = customers[pair_order], merchants[pair_order], times[pair_order]
    same_pair = np.zeros(len(t), dtype=bool)
    same_pair[1:] = (c[1:] == c[:-1]) & (m[1:] == m[:-1])
    has_pred_c, has_pred_t = c[same_pair], t[same_pair]
    prev_t = np.empty_like(t)
    prev_t[1:] = t[:-1]
    release_t = np.maximum(has_pred_t, prev_t[same_pair] + window_us)
    with_pred = _KeyedTimeline(has_pred_c, has_pred_t, span)
    released = _KeyedTimeline(has_pred_c, release_t, span + window_us)
    a = with_pred.count_upto(customers, times)
    b = released.count_upto(customers, times)
    return count - (a - b)


def compute_customer_activity(
    transactions: pd.DataFrame, history: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Per-customer velocity and amount features as of each new transaction (history supplies the look-back)."""
    events, is_new = _with_history(transactions, history)
    agg, customers, times, span = _rolling_activity(events, "customer_id", CUSTOMER_WINDOWS)
    merchants = events["merchant_id"].to_numpy(np.int64)
    distinct = _distinct_in_window(
        customers,
        merchants,
        times,
        span,
        agg["count_24h"],
        int(CUSTOMER_WINDOWS["24h"] / pd.Timedelta("1us")),
    )
    gap = _seconds_since_previous(customers, times)
    frame = pd.DataFrame(
        {
            "customer_id": customers,
            "event_timestamp": events["event_timestamp"] + ACTIVITY_DELAY,
            **{f"txn_count_{w}": agg[f"count_{w}"] for w in CUSTOMER_WINDOWS},
            **{f"amount_sum_{w}": np.round(agg[f"sum_{w}"], 2) for w in CUSTOMER_WINDOWS},
            **{
                f"amount_mean_{w}": np.round(agg[f"sum_{w}"] / agg[f"count_{w}"], 4) for w in CUSTOMER_WINDOWS
            },
            "distinct_merchants_24h": distinct.astype(np.int64),
            "seconds_since_prev_txn": gap,
            "last_txn_unix": _micros(events["event_timestamp"]) // 1_000_000,
        }
    )
    return _new_rows_sorted(frame, is_new, "customer_id")


def _seconds_since_previous(keys: np.ndarray, times_us: np.ndarray) -> np.ndarray:
    """Seconds since the key's previous event, capped at the look-back (also when there is none in it).

    The cap makes the value the same whether computed from all history or from an incremental run's look-back.
    """
    order = np.lexsort((times_us, keys))
    k, t = keys[order], times_us[order]
    gap = np.full(len(t), ACTIVITY_LOOKBACK.total_seconds())
    same = np.zeros(len(t), dtype=bool)
    same[1:] = k[1:] == k[:-1]
    gap[same] = np.minimum((t[1:] - t[:-1])[same[1:]] / 1e6, ACTIVITY_LOOKBACK.total_seconds())
    out = np.empty_like(gap)
    out[order] = gap
    return out


def compute_merchant_activity(
    transactions: pd.DataFrame, history: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Per-merchant traffic features as of each new transaction."""
    events, is_new = _with_history(transactions, history)
    agg, merchants, _, _ = _rolling_activity(events, "merchant_id", MERCHANT_WINDOWS)
    frame = pd.DataFrame(
        {
            "merchant_id": merchants,
            "event_timestamp": events["event_timestamp"] + ACTIVITY_DELAY,
            "merchant_txn_count_1h": agg["count_1h"],
            "merchant_txn_count_24h": agg["count_24h"],
            "merchant_amount_mean_24h": np.round(agg["sum_24h"] / agg["count_24h"], 4),
        }
    )
    return _new_rows_sorted(frame, is_new, "merchant_id")


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
    label_us = _micros(known["label_timestamp"]) if len(known) else np.zeros(0, np.int64)
    t0 = min(int(snap_us.min()) - window_us, int(label_us.min()) if len(label_us) else 0)
    span = max(int(snap_us.max()), int(label_us.max()) if len(label_us) else 0) - t0 + 1
    keys = known["merchant_id"].to_numpy(np.int64)
    timeline = _KeyedTimeline(keys, label_us - t0, span)
    frauds = known["is_fraud"].to_numpy(np.float64)[timeline.order]
    cumulative = np.concatenate([[0.0], np.cumsum(frauds)])

    grid_m = np.repeat(np.asarray(merchant_ids, dtype=np.int64), len(snap_us))
    grid_t = np.tile(snap_us - t0, len(merchant_ids))
    left, right = timeline.window_bounds(grid_m, grid_t, window_us)
    n = (right - left).astype(np.int64)
    fraud = cumulative[right] - cumulative[left]
    # The prior is the overall rate in the same window, so a merchant without labels reads as average.
    all_timeline = _KeyedTimeline(np.zeros(len(label_us), np.int64), label_us - t0, span)
    all_frauds = np.concatenate(
        [[0.0], np.cumsum(known["is_fraud"].to_numpy(np.float64)[all_timeline.order])]
    )
    zeros = np.zeros(len(snap_us), np.int64)
    a_left, a_right = all_timeline.window_bounds(zeros, snap_us - t0, window_us)
    prior = (all_frauds[a_right] - all_frauds[a_left]) / np.maximum(a_right - a_left, 1)
    prior = np.tile(prior, len(merchant_ids))
    rate = (fraud + RISK_PRIOR_WEIGHT * prior) / (n + RISK_PRIOR_WEIGHT)
    frame = pd.DataFrame(
        {
            "merchant_id": grid_m,
            "event_timestamp": pd.to_datetime(grid_t + t0, unit="us", utc=True).as_unit("us"),
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
            "account_created_unix": _micros(customers["account_created_at"]) // 1_000_000,
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


def _with_history(
    transactions: pd.DataFrame, history: pd.DataFrame | None
) -> tuple[pd.DataFrame, np.ndarray]:
    cols = ["transaction_id", "event_timestamp", "customer_id", "merchant_id", "amount"]
    new = transactions[cols]
    if history is None or history.empty:
        return new.reset_index(drop=True), np.ones(len(new), dtype=bool)
    old = history.loc[~history["transaction_id"].isin(new["transaction_id"]), cols]
    events = pd.concat([old, new], ignore_index=True)
    events["event_timestamp"] = events["event_timestamp"].astype("datetime64[us, UTC]")
    return events, np.r_[np.zeros(len(old), bool), np.ones(len(new), bool)]


def _new_rows_sorted(frame: pd.DataFrame, is_new: np.ndarray, key: str) -> pd.DataFrame:
    frame["event_timestamp"] = frame["event_timestamp"].astype("datetime64[us, UTC]")
    out = frame.loc[is_new]
    return out.sort_values(["event_timestamp", key], kind="stable").reset_index(drop=True)


def _empty_risk() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "merchant_id": pd.Series(dtype=np.int64),
            "event_timestamp": pd.Series(dtype="datetime64[us, UTC]"),
            "merchant_fraud_rate_30d": pd.Series(dtype=np.float64),
            "merchant_labeled_txn_30d": pd.Series(dtype=np.int64),
        }
    )
