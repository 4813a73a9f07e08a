"""Sliding-window features declared on Feast feature views, computed exactly two ways from the same declaration.

A feature view whose tags say ``aggregates: transactions`` is computed from transaction events keyed by its
entity's join key; each of its fields declares, in its Feast tags, how::

    Field(name="amount_sum_24h", dtype=Float64,
          tags={"aggregation": "sum", "column": "amount", "window": "24h"})

``aggregation`` is one of ``AGGREGATIONS``; ``window`` is a length pandas parses (``1h``, ``24h``, ``7d``).
A row is the state as of one event, including it: windows are ``(t - window, t]``, and the row is stamped
``STAMP_DELAY`` after the event, so a point-in-time join at an event's own time sees the state after the
entity's previous event, which is what the online store holds when that event is scored.

The two evaluators:
- ``compute_windows``: vectorized, over a whole history at once: the reference for the batch rows, which the
  feature pipeline computes with the same declarations as DuckDB window functions
  (``flows/feature_store/window_sql.py``, held to this one to the bit by its own parity test);
- ``EntityWindows``: one entity, event by event, in amortized constant time per event, late and out-of-order
  events included (the stream processor).
Both do exact arithmetic, so they agree to the bit: amounts are summed as integers of millionths
(``to_units``), counts are integers, and every float is one division of exact integers, done alike in both.
A parity test over a generated history holds them to each other.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from feast import FeatureView

# The tag that marks a feature view as windows over an event stream, and the stream's name.
EVENTS_TAG = "aggregates"
AGGREGATIONS = ("count", "sum", "mean", "count_distinct", "seconds_since_previous", "unix_time")
# Aggregations of a column's values in the window; the others read only event times.
NEEDS_COLUMN = frozenset({"sum", "mean", "count_distinct"})
INTEGER_AGGREGATIONS = frozenset({"count", "count_distinct", "unix_time"})
# Amounts are summed as integers of this many units each: sums are exact, so both evaluators agree.
UNITS = 1_000_000
STAMP_DELAY = pd.Timedelta("1ms")
STAMP_DELAY_US = int(STAMP_DELAY / pd.Timedelta("1us"))
MICROS = 1_000_000
# Below 2**63 the sort key of ``EventIndex`` (entity code times clock width plus rank) cannot overflow.
INT64_LIMIT = 2**63


class WindowDefinitionError(ValueError):
    """A feature view's window tags are missing, unknown or inconsistent with its schema."""


@dataclass(frozen=True)
class WindowedFeature:
    """One field of a windowed view: its aggregation, the event column it reads and its window."""

    name: str
    aggregation: str
    column: str | None
    window_us: int

    @property
    def window_seconds(self) -> float:
        return self.window_us / MICROS


@dataclass(frozen=True)
class WindowedView:
    """A feature view computed as sliding windows over events keyed by one entity column."""

    name: str
    key: str
    events: str
    features: tuple[WindowedFeature, ...]

    @cached_property
    def horizon_us(self) -> int:
        """How far back from an entity's newest event any of its windows reaches."""
        return max(f.window_us for f in self.features)

    @cached_property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @cached_property
    def horizon(self) -> pd.Timedelta:
        return pd.Timedelta(self.horizon_us, unit="us")

    @cached_property
    def columns(self) -> tuple[str, ...]:
        """Event columns the aggregations read (besides the key, the id and the time)."""
        return tuple(dict.fromkeys(f.column for f in self.features if f.column))

    @cached_property
    def unit_columns(self) -> frozenset[str]:
        """Columns summed or averaged, hence carried as integer units."""
        return frozenset(f.column for f in self.features if f.aggregation in ("sum", "mean") and f.column)

    @cached_property
    def windows(self) -> tuple[int, ...]:
        """Window lengths (microseconds) over which something is counted, summed or distinct-counted."""
        return tuple(
            sorted({f.window_us for f in self.features if f.aggregation in ("count", *NEEDS_COLUMN)})
        )

    @cached_property
    def aggregates(self) -> dict[int, tuple[tuple[str, ...], tuple[str, ...]]]:
        """Per window length: the columns summed in it and the columns distinct-counted in it."""
        return {
            window: (
                tuple(
                    dict.fromkeys(
                        f.column
                        for f in self.features
                        if f.window_us == window and f.aggregation in ("sum", "mean") and f.column
                    )
                ),
                tuple(
                    dict.fromkeys(
                        f.column
                        for f in self.features
                        if f.window_us == window and f.aggregation == "count_distinct" and f.column
                    )
                ),
            )
            for window in self.windows
        }

    @classmethod
    def from_feature_view(cls, view: FeatureView, join_keys: Mapping[str, str] | None = None) -> WindowedView:
        """The declaration carried by a Feast feature view's tags (see the module docstring).

        A view read from a registry knows its join key; one parsed from the repository's files does not yet,
        and ``join_keys`` (entity name to join key) supplies it.
        """
        events = view.tags.get(EVENTS_TAG)
        if not events:
            raise WindowDefinitionError(f"feature view {view.name!r} has no {EVENTS_TAG!r} tag")
        keys = [c.name for c in view.entity_columns] or [(join_keys or {}).get(e, e) for e in view.entities]
        if len(keys) != 1:
            raise WindowDefinitionError(
                f"feature view {view.name!r} must have exactly one entity join key to be windowed, has {keys}"
            )
        features = tuple(_windowed_feature(view.name, field) for field in view.features)
        if not features:
            raise WindowDefinitionError(f"feature view {view.name!r} declares no fields")
        return cls(view.name, keys[0], events, features)


def _windowed_feature(view: str, field: Any) -> WindowedFeature:
    tags = field.tags
    where = f"field {field.name!r} of feature view {view!r}"
    aggregation = tags.get("aggregation")
    if aggregation not in AGGREGATIONS:
        raise WindowDefinitionError(
            f"{where}: tag 'aggregation' is {aggregation!r}; expected one of {', '.join(AGGREGATIONS)}"
        )
    column = tags.get("column") or None
    if (aggregation in NEEDS_COLUMN) != (column is not None):
        need = "needs" if aggregation in NEEDS_COLUMN else "takes no"
        raise WindowDefinitionError(f"{where}: aggregation {aggregation!r} {need} a 'column' tag")
    window = tags.get("window")
    if aggregation == "unix_time":
        window_us = 0
    else:
        try:
            window_us = int(pd.Timedelta(window) / pd.Timedelta("1us"))
        except (TypeError, ValueError) as error:
            raise WindowDefinitionError(f"{where}: tag 'window' {window!r} is not a duration") from error
        if window_us <= 0:
            raise WindowDefinitionError(f"{where}: tag 'window' must be positive, got {window!r}")
    integer = aggregation in INTEGER_AGGREGATIONS
    kind = field.dtype.to_value_type().name
    if (kind == "INT64") != integer or kind not in ("INT64", "DOUBLE"):
        expected = "Int64" if integer else "Float64"
        raise WindowDefinitionError(f"{where}: aggregation {aggregation!r} gives {expected}, declared {kind}")
    return WindowedFeature(field.name, aggregation, column, window_us)


def windowed_views(
    views: Iterable[FeatureView], join_keys: Mapping[str, str] | None = None, events: str = "transactions"
) -> list[WindowedView]:
    """The windowed views among ``views`` computed from the named event stream, in the given order."""
    return [WindowedView.from_feature_view(v, join_keys) for v in views if v.tags.get(EVENTS_TAG) == events]


def to_units(amounts: np.ndarray | pd.Series) -> np.ndarray:
    """Amounts as integers of millionths (round half to even, as ``round`` does for one value)."""
    return np.rint(np.asarray(amounts, dtype=np.float64) * UNITS).astype(np.int64)


def micros(timestamps: pd.Series | pd.DatetimeIndex) -> np.ndarray:
    """UTC timestamps as integer microseconds since the epoch."""
    return pd.DatetimeIndex(timestamps).tz_convert("UTC").as_unit("us").asi8


# ---------------------------------------------------------------------------------------------------------
# Over a history at once
# ---------------------------------------------------------------------------------------------------------


class EventIndex:
    """Events sorted by (entity, time), answering "how many of an entity's events are at or before x" exactly.

    Entities are dense codes (``pd.factorize``) and times are ranks in ``clock``, the sorted distinct times the
    index holds, so the sort key ``code * (len(clock) + 1) + rank`` stays below n² whatever the ids and the
    time span. (Multiplying the id itself by the time span overflowed int64 for ten-digit ids.) Queries may
    use any time: a time's rank is how many clock values are at or before it.
    """

    def __init__(self, codes: np.ndarray, times_us: np.ndarray, n_codes: int) -> None:
        self.clock = np.unique(times_us)
        self.width = np.int64(len(self.clock) + 1)
        if max(n_codes, 1) * int(self.width) >= INT64_LIMIT:
            raise OverflowError(
                f"{len(times_us):,} events of {n_codes:,} entities are too many for one index: "
                "compute the features in shards of entities"
            )
        composite = codes.astype(np.int64) * self.width + np.searchsorted(self.clock, times_us)
        self.order = np.argsort(composite, kind="stable")
        self.sorted = composite[self.order]

    def upto(self, codes: np.ndarray, times_us: np.ndarray) -> np.ndarray:
        """Sorted position just after each entity's last event at or before the given time."""
        ranks = np.searchsorted(self.clock, times_us, side="right")
        return np.searchsorted(self.sorted, codes.astype(np.int64) * self.width + ranks, side="left")

    def first(self, codes: np.ndarray) -> np.ndarray:
        """Sorted position of each entity's first event."""
        return np.searchsorted(self.sorted, codes.astype(np.int64) * self.width, side="left")

    def count_upto(self, codes: np.ndarray, times_us: np.ndarray) -> np.ndarray:
        """How many of each entity's events are at or before the given time."""
        return self.upto(codes, times_us) - self.first(codes)


def compute_windows(
    view: WindowedView, events: pd.DataFrame, history: pd.DataFrame | None = None
) -> pd.DataFrame:
    """The view's row as of each event of ``events``; ``history`` supplies earlier events for the look-back.

    Both frames hold ``transaction_id``, ``event_timestamp``, the view's key and the columns it aggregates. A
    history row with the id of a new event is the same event and is dropped. Rows come sorted by stamp, then key.
    """
    frame, is_new = with_history(view, events, history)
    keys = frame[view.key].to_numpy()
    codes, uniques = pd.factorize(keys)
    times = micros(frame["event_timestamp"])
    index = EventIndex(codes, times, len(uniques))
    units = {c: to_units(frame[c]) for c in view.unit_columns}
    sums = {c: np.concatenate([[0], np.cumsum(units[c][index.order])]) for c in units}
    bounds: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    right = index.upto(codes, times)
    for window in view.windows:
        bounds[window] = (index.upto(codes, times - window), right)
    out: dict[str, Any] = {
        view.key: keys,
        "event_timestamp": pd.to_datetime(times + STAMP_DELAY_US, unit="us", utc=True).as_unit("us"),
    }
    for feature in view.features:
        out[feature.name] = _batch_values(feature, frame, codes, times, bounds, sums)
    result = pd.DataFrame(out).loc[is_new]
    return result.sort_values(["event_timestamp", view.key], kind="stable").reset_index(drop=True)


def _batch_values(
    feature: WindowedFeature,
    frame: pd.DataFrame,
    codes: np.ndarray,
    times: np.ndarray,
    bounds: Mapping[int, tuple[np.ndarray, np.ndarray]],
    sums: Mapping[str, np.ndarray],
) -> np.ndarray:
    kind = feature.aggregation
    if kind == "unix_time":
        return times // MICROS
    if kind == "seconds_since_previous":
        return _seconds_since_previous(codes, times, feature.window_us)
    left, right = bounds[feature.window_us]
    count = (right - left).astype(np.int64)
    if kind == "count":
        return count
    if kind == "count_distinct":
        values, _ = pd.factorize(frame[feature.column])
        return _distinct_in_window(codes, values, times, count, feature.window_us)
    cumulative = sums[feature.column]
    # int64 cumulative sums may wrap on a long history; the difference of two is exact all the same.
    total = (cumulative[right] - cumulative[left]).astype(np.float64)
    if kind == "sum":
        return total / UNITS
    return total / (count * float(UNITS))


def _seconds_since_previous(codes: np.ndarray, times: np.ndarray, cap_us: int) -> np.ndarray:
    """Seconds since the entity's previous event, capped (also when there is none within the cap).

    The cap makes the value the same whether computed from all history or from an incremental run's look-back.
    """
    cap = cap_us / MICROS
    order = np.lexsort((times, codes))
    c, t = codes[order], times[order]
    gap = np.full(len(t), cap)
    same = np.zeros(len(t), dtype=bool)
    same[1:] = c[1:] == c[:-1]
    gap[same] = np.minimum((t[1:] - t[:-1])[same[1:]] / MICROS, cap)
    out = np.empty_like(gap)
    out[order] = gap
    return out


def _distinct_in_window(
    codes: np.ndarray, values: np.ndarray, times: np.ndarray, count: np.ndarray, window_us: int
) -> np.ndarray:
    """Distinct values per entity in ``(t - w, t]``.

    An event repeats a value inside the window exactly when its previous event with the same (entity, value)
    is after ``t - w``; so distinct = count - #{events j <= t whose previous same-pair event p_j is after
    t - w} = count - (A(t) - B(t)), with A counting events that have such a predecessor and B those whose
    ``max(t_j, t_pj + w)`` is at or before t.
    """
    pair_order = np.lexsort((times, values, codes))
    c, v, t = codes[pair_order], values[pair_order], times[pair_order]
    same_pair = np.zeros(len(t), dtype=bool)
    same_pair[1:] = (c[1:] == c[:-1]) & (v[1:] == v[:-1])
    repeat_codes, repeat_times = c[same_pair], t[same_pair]
    previous = np.empty_like(t)
    previous[1:] = t[:-1]
    released_times = np.maximum(repeat_times, previous[same_pair] + window_us)
    n_codes = int(codes.max()) + 1 if len(codes) else 0
    a = EventIndex(repeat_codes, repeat_times, n_codes).count_upto(codes, times)
    b = EventIndex(repeat_codes, released_times, n_codes).count_upto(codes, times)
    return (count - (a - b)).astype(np.int64)


def with_history(
    view: WindowedView, events: pd.DataFrame, history: pd.DataFrame | None
) -> tuple[pd.DataFrame, np.ndarray]:
    """The events a batch evaluation reads, history first, and which of them are new (a history row with a new
    event's id is that event and is left out)."""
    columns = list(dict.fromkeys(["transaction_id", "event_timestamp", view.key, *view.columns]))
    new = events[columns]
    if history is None or history.empty:
        return new.reset_index(drop=True), np.ones(len(new), dtype=bool)
    old = history.loc[~history["transaction_id"].isin(new["transaction_id"]), columns]
    frame = pd.concat([old, new], ignore_index=True)
    frame["event_timestamp"] = frame["event_timestamp"].astype("datetime64[us, UTC]")
    return frame, np.r_[np.zeros(len(old), bool), np.ones(len(new), bool)]


# ---------------------------------------------------------------------------------------------------------
# Event by event
# ---------------------------------------------------------------------------------------------------------


class EntityWindows:
    """One entity's events within the view's horizon and its aggregates as of its newest event.

    Events may come late and out of order; each is counted once (a repeated ``event_id`` is ignored). The
    events are kept in time order (ties in arrival order) with a running total of each summed column, as
    ``compute_windows`` keeps its cumulative sums: a window's count is how many events follow its start, its
    sum the difference of two running totals, so an event costs the same whatever the window holds (a
    merchant with millions of events a day costs what a quiet one does). Only distinct counts keep a
    multiset per window. An event that arrives after later ones also updates the running totals after it,
    in time proportional to how many came after it. Events that no window of the newest event reaches are
    dropped (lazily, in blocks).
    """

    __slots__ = ("_distinct", "_left", "_totals", "ids", "order", "times", "values", "view")

    PRUNE_BLOCK = 256

    def __init__(self, view: WindowedView) -> None:
        self.view = view
        # Parallel lists in time order: times, event ids, the aggregated columns.
        self.times: list[int] = []
        self.order: list[str] = []
        self.ids: set[str] = set()
        self.values: dict[str, list[Any]] = {c: [] for c in view.columns}
        # Per summed column, the total of the events before each position (one more entry than events).
        self._totals: dict[str, list[int]] = {c: [0] for c in view.unit_columns}
        # Per window, the position of its first event (the window is that event up to the newest).
        self._left = dict.fromkeys(view.windows, 0)
        self._distinct: dict[int, dict[str, dict[Any, int]]] = {
            w: {c: {} for c in counted} for w, (_, counted) in view.aggregates.items() if counted
        }

    def __len__(self) -> int:
        return len(self.times)

    @property
    def newest(self) -> int | None:
        return self.times[-1] if self.times else None

    def add(self, event_id: str, time_us: int, row: Mapping[str, Any]) -> bool:
        """Add an event (``row`` holds the view's columns; summed ones as units); False when it changes nothing:
        seen before, or older than every window of the newest event."""
        if event_id in self.ids:
            return False
        times = self.times
        newest = times[-1] if times else None
        if newest is not None and time_us <= newest - self.view.horizon_us:
            return False
        self.ids.add(event_id)
        if newest is None or time_us >= newest:
            times.append(time_us)
            self.order.append(event_id)
            for column, values in self.values.items():
                values.append(row[column])
            for column, totals in self._totals.items():
                totals.append(totals[-1] + row[column])
            if newest is None or time_us > newest:
                # The newest event moved: each window's start slides past what fell out of it.
                left_of = self._left
                for window, left in left_of.items():
                    limit = time_us - window
                    if times[left] <= limit:
                        counted = self._distinct.get(window)
                        while times[left] <= limit:
                            if counted:
                                self._leave(counted, left)
                            left += 1
                        left_of[window] = left
            for counted in self._distinct.values():
                self._enter(counted, row)
        else:
            self._insert_late(event_id, time_us, row, newest)
        if times[0] <= times[-1] - self.view.horizon_us:  # something fell out of every window
            self._prune()
        return True

    def _insert_late(self, event_id: str, time_us: int, row: Mapping[str, Any], newest: int) -> None:
        times = self.times
        position = bisect_right(times, time_us)
        times.insert(position, time_us)
        self.order.insert(position, event_id)
        for column, values in self.values.items():
            values.insert(position, row[column])
        for column, totals in self._totals.items():
            amount = row[column]
            totals.insert(position + 1, totals[position] + amount)
            for i in range(position + 2, len(totals)):
                totals[i] += amount
        for window in self._left:
            if time_us > newest - window:
                if counted := self._distinct.get(window):
                    self._enter(counted, row)
            else:  # inserted before the window's first event
                self._left[window] += 1

    @staticmethod
    def _enter(counted: dict[str, dict[Any, int]], row: Mapping[str, Any]) -> None:
        for column, counts in counted.items():
            value = row[column]
            counts[value] = counts.get(value, 0) + 1

    def _leave(self, counted: dict[str, dict[Any, int]], position: int) -> None:
        for column, counts in counted.items():
            value = self.values[column][position]
            left = counts[value] - 1
            if left:
                counts[value] = left
            else:
                del counts[value]

    def _prune(self) -> None:
        stale = bisect_right(self.times, self.times[-1] - self.view.horizon_us)
        if stale < self.PRUNE_BLOCK and stale * 2 < len(self.times):
            return
        self.ids.difference_update(self.order[:stale])
        del self.order[:stale]
        del self.times[:stale]
        for values in self.values.values():
            del values[:stale]
        for totals in self._totals.values():
            del totals[:stale]
        for window in self._left:
            self._left[window] -= stale

    def features(self) -> dict[str, Any]:
        """The view's values as of the newest event (``compute_windows``' row for it, to the bit)."""
        return dict(zip(self.view.feature_names, self.feature_values(), strict=True))

    def feature_values(self) -> list[Any]:
        """``features()``' values in the order of the view's features."""
        times = self.times
        if not times:
            raise LookupError(f"no events for this entity of {self.view.name!r}")
        newest, n = times[-1], len(times)
        left_of, totals = self._left, self._totals
        out: list[Any] = []
        for feature in self.view.features:
            kind, window = feature.aggregation, feature.window_us
            if kind == "count":
                out.append(n - left_of[window])
            elif kind == "sum" or kind == "mean":
                running = totals[feature.column]
                left = left_of[window]
                total = float(running[n] - running[left])
                out.append(total / UNITS if kind == "sum" else total / ((n - left) * float(UNITS)))
            elif kind == "count_distinct":
                out.append(len(self._distinct[window][feature.column]))
            elif kind == "unix_time":
                out.append(newest // MICROS)
            else:  # seconds_since_previous
                cap = window / MICROS
                out.append(min((newest - times[-2]) / MICROS, cap) if n > 1 else cap)
        return out

    def stamp_us(self) -> int:
        """When the newest row becomes known (the event's time plus ``STAMP_DELAY``)."""
        if not self.times:
            raise LookupError(f"no events for this entity of {self.view.name!r}")
        return self.times[-1] + STAMP_DELAY_US


def event_row(view: WindowedView, values: Mapping[str, Any]) -> dict[str, Any]:
    """An event's columns as ``EntityWindows.add`` takes them: summed columns in integer units."""
    units = view.unit_columns
    return {c: round(values[c] * UNITS) if c in units else values[c] for c in view.columns}
