"""The windowed views' batch rows as DuckDB window functions, generated from the same Feast declarations.

``compute_windows`` (services/stream/windows.py) evaluates a view's declaration with numpy; this module
evaluates the same declaration as SQL, which DuckDB runs in C++ over sorted partitions (and spills to disk past
its memory limit). Each aggregation maps onto a window function over the entity's events ordered by integer
microseconds:

- ``count`` and ``sum``/``mean`` over ``RANGE BETWEEN w - 1 PRECEDING AND CURRENT ROW``: the window
  ``(t - w, t]``, with the events at the same moment included, as ``compute_windows`` counts them;
- ``count_distinct``: ``count(DISTINCT ...)`` over the same frame, of the values' ``pd.factorize`` codes (so a
  missing value counts as a value, as there);
- ``seconds_since_previous``: ``lag`` over the events in time order, ties in the frame's order, capped;
- ``unix_time``: the event's time in whole seconds.

Amounts enter as the same integer units (``to_units``), sums are exact integers, and every float is the same
one IEEE division of the same integers, so the rows equal ``compute_windows``' to the bit. A parity test over
generated histories holds the two to each other (and the stream processor's holds ``compute_windows`` to the
stream).
"""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from services.stream.windows import (
    MICROS,
    STAMP_DELAY_US,
    UNITS,
    WindowedFeature,
    WindowedView,
    micros,
    to_units,
    with_history,
)


def compute_windows_sql(
    view: WindowedView, events: pd.DataFrame, history: pd.DataFrame | None = None
) -> pd.DataFrame:
    """``compute_windows(view, events, history)``, evaluated by DuckDB (same rows, same order, same bits)."""
    frame, is_new = with_history(view, events, history)
    keys = frame[view.key].to_numpy()
    columns: dict[str, np.ndarray] = {
        "rn": np.arange(len(frame), dtype=np.int64),
        "is_new": is_new,
        "k": pd.factorize(keys)[0].astype(np.int64),
        "t": micros(frame["event_timestamp"]),
    }
    for column in view.unit_columns:
        columns[f"u_{column}"] = to_units(frame[column])
    for column in {f.column for f in view.features if f.aggregation == "count_distinct" and f.column}:
        columns[f"d_{column}"] = pd.factorize(frame[column])[0].astype(np.int64)
    with duckdb.connect() as connection:
        connection.register("events", pa.table(columns))
        result = connection.execute(window_query(view)).fetchnumpy()
    rows = result["rn"]
    out: dict[str, object] = {
        view.key: keys[rows],
        "event_timestamp": pd.to_datetime(result["t"] + STAMP_DELAY_US, unit="us", utc=True).as_unit("us"),
    }
    for feature in view.features:
        out[feature.name] = np.asarray(result[feature.name])
    # The key's values, not its codes, order rows at the same moment, as in compute_windows (stable: ties of
    # moment and key keep the frame's order).
    return pd.DataFrame(out).sort_values(["event_timestamp", view.key], kind="stable").reset_index(drop=True)


def window_query(view: WindowedView) -> str:
    """The SELECT over ``events`` (``rn``, ``is_new``, ``k``, ``t``, ``u_<column>``, ``d_<column>``) that gives
    the view's rows for the new events, in the frame's order."""
    windows = {
        f.window_us for f in view.features if f.aggregation in ("count", "sum", "mean", "count_distinct")
    }
    definitions = [
        "previous AS (PARTITION BY k ORDER BY t, rn)",
        *(
            f"w{w} AS (PARTITION BY k ORDER BY t RANGE BETWEEN {w - 1} PRECEDING AND CURRENT ROW)"
            for w in sorted(windows)
        ),
    ]
    computed = ",\n    ".join(f'{_expression(f)} AS "{f.name}"' for f in view.features)
    names = ", ".join(f'"{f.name}"' for f in view.features)
    return f"""
SELECT rn, t, {names}
FROM (
  SELECT rn, is_new, t,
    {computed}
  FROM events
  WINDOW {", ".join(definitions)}
)
WHERE is_new
ORDER BY rn
"""


def _expression(feature: WindowedFeature) -> str:
    w, kind = feature.window_us, feature.aggregation
    as_double = "CAST({} AS DOUBLE)".format
    if kind == "count":
        return f"count(*) OVER w{w}"
    if kind == "sum":
        return f"{as_double(f'sum(u_{feature.column}) OVER w{w}')} / {as_double(UNITS)}"
    if kind == "mean":
        total = as_double(f"sum(u_{feature.column}) OVER w{w}")
        return f"{total} / ({as_double(f'count(*) OVER w{w}')} * {as_double(UNITS)})"
    if kind == "count_distinct":
        return f"count(DISTINCT d_{feature.column}) OVER w{w}"
    if kind == "unix_time":
        return f"t // {MICROS}"
    cap = as_double(repr(w / MICROS))
    return f"coalesce(least({as_double('t - lag(t) OVER previous')} / {as_double(MICROS)}, {cap}), {cap})"
