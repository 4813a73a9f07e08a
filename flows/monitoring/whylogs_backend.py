"""The whylogs implementation of ``DriftBackend``: statistics read from whylogs 1.6 profile sketches.

Numeric columns use whylogs' two-sample KS test on the KLL sketches and its Hellinger distance on their
histograms (its drift module, reached through ``model_store.libraries.whylogs.drift_algorithms``).
Categorical columns use a two-sample chi-squared test of homogeneity on the frequent-items counts (scipy),
with Hellinger and total variation distances, not whylogs' ``ChiSquare``: that one treats the reference shares
as exact and truncates the expected counts to integers, so it flags clean windows far more often than its
p-value says (figures: docs/architecture.md, "Why it is built this way").
"""

from __future__ import annotations

import itertools
import math
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import stats

from flows.monitoring.drift import TYPE_CLASSES, ColumnKind, ColumnStatistics, Distribution
from model_store import libraries

if TYPE_CHECKING:
    from whylogs.core import DatasetProfileView
    from whylogs.core.view.column_profile_view import ColumnProfileView

NUMERIC_BINS = 20
TOP_CATEGORIES = 12
OTHER = "(other)"
# Categories expected fewer times than this in either sample are pooled: the chi-squared approximation
# overstates drift on tiny cells.
MIN_EXPECTED = 5.0


class WhylogsBackend:
    """Drift statistics over whylogs ``DatasetProfileView``s."""

    name = "whylogs"

    def compare(self, reference: DatasetProfileView, current: DatasetProfileView) -> list[ColumnStatistics]:
        ref_columns, cur_columns = reference.get_columns(), current.get_columns()
        names = list(ref_columns) + [c for c in cur_columns if c not in ref_columns]
        return [self._compare_column(n, ref_columns.get(n), cur_columns.get(n)) for n in names]

    def distribution(
        self, reference: DatasetProfileView, current: DatasetProfileView, column: str
    ) -> Distribution | None:
        ref, cur = reference.get_column(column), current.get_column(column)
        if ref is None or cur is None:
            return None
        kind = column_kind(ref)
        if kind == "numeric":
            return numeric_distribution(column, ref, cur)
        if kind == "categorical":
            return categorical_distribution(column, ref, cur)
        return None

    def row_count(self, profile: DatasetProfileView) -> int:
        return max((_counts(c)[0] for c in profile.get_columns().values()), default=0)

    def _compare_column(
        self, name: str, ref: ColumnProfileView | None, cur: ColumnProfileView | None
    ) -> ColumnStatistics:
        ref_n, ref_null = _counts(ref) if ref is not None else (0, 0)
        cur_n, cur_null = _counts(cur) if cur is not None else (0, 0)
        ref_types = _type_classes(ref) if ref is not None else {}
        cur_types = _type_classes(cur) if cur is not None else {}
        ref_type = max(ref_types, key=ref_types.__getitem__) if any(ref_types.values()) else None
        cur_type = max(cur_types, key=cur_types.__getitem__) if any(cur_types.values()) else None
        cur_typed = sum(cur_types.values())
        off_type = (cur_typed - cur_types.get(ref_type, 0)) / cur_typed if ref_type and cur_typed else 0.0
        base = {
            "column": name,
            "reference_count": ref_n,
            "current_count": cur_n,
            "reference_missing": ref_null / ref_n if ref_n else 0.0,
            "current_missing": cur_null / cur_n if cur_n else 0.0,
            "reference_type": ref_type,
            "current_type": cur_type,
            "current_off_type": off_type,
        }
        kind = column_kind(ref) if ref is not None else "empty"
        if ref is None or cur is None or kind == "empty" or cur_n == cur_null:
            return ColumnStatistics(kind=kind, **base)
        if kind == "numeric":
            return ColumnStatistics(kind=kind, **base, **numeric_test(ref, cur))
        return ColumnStatistics(kind=kind, **base, **categorical_test(ref, cur))


def column_kind(column: ColumnProfileView) -> ColumnKind:
    """Numeric when most typed values are numbers, categorical for strings and booleans."""
    classes = _type_classes(column)
    if not any(classes.values()):
        return "empty"
    dominant = max(classes, key=classes.__getitem__)
    return "numeric" if dominant == "numeric" else "categorical"


def numeric_test(ref: ColumnProfileView, cur: ColumnProfileView) -> dict[str, Any]:
    """whylogs' KS test (statistic and p-value) and Hellinger distance of two numeric columns."""
    algorithms = libraries.whylogs.drift_algorithms()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # whylogs warns on empty sketches; they come back as None
        ks = algorithms.KS().calculate(target_column_view=cur, reference_column_view=ref)
        hellinger = algorithms.Hellinger().calculate(target_column_view=cur, reference_column_view=ref)
    return {
        "test": "ks",
        "statistic": _float(ks.statistic) if ks else None,
        "p_value": _float(ks.pvalue) if ks else None,
        "distance": _float(hellinger.statistic) if hellinger else None,
        "shift": _float(ks.statistic) if ks else None,
    }


def categorical_test(ref: ColumnProfileView, cur: ColumnProfileView) -> dict[str, Any]:
    """Two-sample chi-squared test, Hellinger and total variation distances over the frequent-items counts."""
    ref_counts, cur_counts = category_counts(ref), category_counts(cur)
    labels = sorted(set(ref_counts) | set(cur_counts))
    table = np.array([[ref_counts.get(k, 0.0) for k in labels], [cur_counts.get(k, 0.0) for k in labels]])
    distances = {
        "distance": hellinger_distance(table[0], table[1]),
        "shift": total_variation(table[0], table[1]),
    }
    table = pool_rare_categories(table)
    if table.shape[1] < 2:
        return {"test": "chi-square", "statistic": 0.0, "p_value": 1.0, **distances}
    result = stats.chi2_contingency(table, correction=False)
    return {
        "test": "chi-square",
        "statistic": _float(result.statistic),
        "p_value": _float(result.pvalue),
        **distances,
    }


def category_counts(column: ColumnProfileView) -> dict[str, float]:
    """Estimated count per value, plus the rows beyond the sketch's frequent items as ``(other)``."""
    from whylogs.core.configs import SummaryConfig

    metric = column.get_metric("frequent_items")
    if metric is None:
        return {}
    items = metric.to_summary_dict(SummaryConfig())["frequent_strings"]
    counts = {str(item.value): float(item.est) for item in items}
    n, null = _counts(column)
    rest = n - null - sum(counts.values())
    if rest > 0:
        counts[OTHER] = counts.get(OTHER, 0.0) + rest
    return counts


def pool_rare_categories(table: np.ndarray) -> np.ndarray:
    """Merge the categories expected fewer than ``MIN_EXPECTED`` times in either row into one column."""
    table = table[:, table.sum(axis=0) > 0]
    # The smaller sample sets the expected counts: a category's share of all rows times that sample's size.
    small = int(np.argmin(table.sum(axis=1)))
    expected = table.sum(axis=0) * table[small].sum() / table.sum()
    # Rare on both counts: a category seen often in the small sample (a new one) is evidence, not noise.
    rare = (expected < MIN_EXPECTED) & (table[small] < MIN_EXPECTED)
    if not rare.any() or rare.all():
        return table
    pooled = table[:, rare].sum(axis=1)
    kept = table[:, ~rare]
    if expected[rare].sum() < MIN_EXPECTED:
        # Still too rare as a group: fold it into the most common category, where it changes little.
        kept = kept.copy()
        kept[:, int(np.argmax(kept.sum(axis=0)))] += pooled
        return kept
    return np.column_stack([kept, pooled])


def hellinger_distance(p: np.ndarray, q: np.ndarray) -> float | None:
    """Hellinger distance of two count vectors over the same categories (0 same, 1 disjoint)."""
    if p.sum() <= 0 or q.sum() <= 0:
        return None
    p, q = p / p.sum(), q / q.sum()
    return float(np.sqrt(0.5 * np.sum((np.sqrt(p) - np.sqrt(q)) ** 2)))


def total_variation(p: np.ndarray, q: np.ndarray) -> float | None:
    """Total variation distance of two count vectors: the share of rows that would have to change category."""
    if p.sum() <= 0 or q.sum() <= 0:
        return None
    return float(0.5 * np.abs(p / p.sum() - q / q.sum()).sum())


def numeric_distribution(name: str, ref: ColumnProfileView, cur: ColumnProfileView) -> Distribution | None:
    """Shares over common bins between the 1st and 99th percentiles; tails fall into the end bins."""
    ref_kll, cur_kll = _kll(ref), _kll(cur)
    if ref_kll is None or cur_kll is None:
        return None
    ref_q, cur_q = ref_kll.get_quantiles([0.01, 0.99]), cur_kll.get_quantiles([0.01, 0.99])
    lo, hi = min(ref_q[0], cur_q[0]), max(ref_q[1], cur_q[1])
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        lo, hi = (
            min(ref_kll.get_min_value(), cur_kll.get_min_value()),
            max(ref_kll.get_max_value(), cur_kll.get_max_value()),
        )
        if hi <= lo:
            hi = lo + 1.0
    log_scale = lo > 0 and hi / lo > 100
    edges = np.geomspace(lo, hi, NUMERIC_BINS + 1) if log_scale else np.linspace(lo, hi, NUMERIC_BINS + 1)
    splits = list(edges[1:-1])
    labels = [f"{a:.3g}-{b:.3g}" for a, b in itertools.pairwise(edges)]
    return Distribution(
        column=name,
        kind="numeric",
        labels=labels,
        reference=[float(x) for x in ref_kll.get_pmf(splits)],
        current=[float(x) for x in cur_kll.get_pmf(splits)],
        edges=[float(x) for x in edges],
        log_scale=log_scale,
    )


def categorical_distribution(name: str, ref: ColumnProfileView, cur: ColumnProfileView) -> Distribution:
    """Shares of the most common categories of either side; the rest are summed as ``(other)``."""
    ref_counts, cur_counts = category_counts(ref), category_counts(cur)
    ref_total, cur_total = sum(ref_counts.values()) or 1.0, sum(cur_counts.values()) or 1.0
    labels = sorted(
        set(ref_counts) | set(cur_counts),
        key=lambda k: -max(ref_counts.get(k, 0) / ref_total, cur_counts.get(k, 0) / cur_total),
    )
    shown = [k for k in labels if k != OTHER][:TOP_CATEGORIES]
    ref_share = [ref_counts.get(k, 0.0) / ref_total for k in shown]
    cur_share = [cur_counts.get(k, 0.0) / cur_total for k in shown]
    if len(shown) < len(labels):
        shown.append(OTHER)
        ref_share.append(max(0.0, 1.0 - sum(ref_share)))
        cur_share.append(max(0.0, 1.0 - sum(cur_share)))
    return Distribution(column=name, kind="categorical", labels=shown, reference=ref_share, current=cur_share)


def _kll(column: ColumnProfileView) -> Any | None:
    metric = column.get_metric("distribution")
    if metric is None or metric.kll.value.is_empty():
        return None
    return metric.kll.value


def _counts(column: ColumnProfileView) -> tuple[int, int]:
    metric = column.get_metric("counts")
    if metric is None:
        return 0, 0
    return int(metric.n.value), int(metric.null.value)


def _type_classes(column: ColumnProfileView) -> dict[str, int]:
    metric = column.get_metric("types")
    if metric is None:
        return {}
    summary = metric.to_summary_dict()
    classes: dict[str, int] = {}
    for whylogs_type, count in summary.items():
        type_class = TYPE_CLASSES.get(whylogs_type, "object")
        classes[type_class] = classes.get(type_class, 0) + int(count)
    return classes


def _float(value: Any) -> float | None:
    return None if value is None else float(value)
