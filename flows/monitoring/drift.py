"""Drift between a reference profile and a window of traffic: the backend interface and the verdicts.

A backend turns two profiles into per-column statistics (a test statistic, its p-value, a distance, missing
values and types). Verdicts are backend-free: p-values are corrected for testing every column of a window at
once, and a column drifts only when its corrected p-value is below ``alpha`` *and* its shift is large
enough to matter. Both shifts read as "a share of rows moved": the KS distance (largest gap between the two
cumulative distributions) for numbers, the total variation distance for categories. The floor keeps long
windows (where any tiny shift is "significant") and slowly creeping features (account age grows every day)
from alarming; the correction keeps the chance of a false alarm per window near ``alpha`` however many
columns there are.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, Field
from scipy import stats

from model_store.profiles import SCORE_COLUMN

ColumnKind = Literal["numeric", "categorical", "empty"]
Correction = Literal["holm", "bonferroni", "bh"]
# whylogs' type counters, grouped into what a model can tell apart: an int column that gains a null arrives
# as floats, which is not a change of meaning.
TYPE_CLASSES = {"integral": "numeric", "fractional": "numeric", "boolean": "boolean", "string": "string"}
# Reported but not drift: traffic carrying a column the model was not trained on cannot hurt its scores.
INFORMATIVE_REASONS = {"new column"}


@dataclass(frozen=True)
class ColumnStatistics:
    """What a backend measured for one column of the reference and of the current window."""

    column: str
    kind: ColumnKind
    test: str | None = None  # "ks" or "chi-square"
    statistic: float | None = None  # KS D, or the chi-squared statistic
    p_value: float | None = None
    distance: float | None = None  # Hellinger distance in [0, 1]
    shift: float | None = None  # the effect judged: KS D (numeric) or total variation distance (categorical)
    reference_count: int = 0
    current_count: int = 0
    reference_missing: float = 0.0  # share of null values
    current_missing: float = 0.0
    reference_type: str | None = None  # the dominant type class
    current_type: str | None = None
    current_off_type: float = 0.0  # share of current non-null values not of the reference's type class


@dataclass(frozen=True)
class Distribution:
    """Reference and current shares of one column over the same bins or categories, for plots."""

    column: str
    kind: ColumnKind
    labels: list[str]  # category names, or bin labels
    reference: list[float]
    current: list[float]
    edges: list[float] | None = None  # numeric bins: len(labels) + 1 edges, tails folded into the end bins
    log_scale: bool = False


class DriftBackend(Protocol):
    """Statistics over two profiles of the same columns; profiles are whatever the backend stores."""

    name: str

    def compare(self, reference: Any, current: Any) -> list[ColumnStatistics]:
        """Per-column statistics of ``current`` against ``reference`` (the union of their columns)."""
        ...

    def distribution(self, reference: Any, current: Any, column: str) -> Distribution | None:
        """Both shares of ``column`` over common bins, or ``None`` when it cannot be drawn."""
        ...

    def row_count(self, profile: Any) -> int:
        """How many rows the profile summarises."""
        ...


class DriftThresholds(BaseModel):
    """When a column counts as drifted."""

    alpha: float = Field(0.05, gt=0, lt=1, description="False-alarm rate per window, after correction.")
    correction: Correction = Field(
        "holm",
        description="Multiple-testing correction over the columns of a window: holm or bonferroni bound the "
        "chance of any false flag (what an alert needs); bh bounds the share of false flags.",
    )
    min_ks_statistic: float = Field(
        0.1, ge=0, le=1, description="Smallest KS distance (max CDF gap) of a numeric column that matters."
    )
    min_category_shift: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Smallest total variation distance (share of rows that changed category) of a categorical "
        "column that matters.",
    )
    max_missing_change: float = Field(
        0.05, ge=0, le=1, description="Largest change in the share of missing values before it is flagged."
    )
    max_off_type: float = Field(
        0.01, ge=0, le=1, description="Largest share of values of another type class before it is flagged."
    )
    min_rows: int = Field(200, ge=1, description="Fewer rows in the window give statistics but no verdict.")


@dataclass(frozen=True)
class ColumnVerdict:
    """A column's statistics, its corrected p-value and whether (and why) it drifted."""

    stats: ColumnStatistics
    adjusted_p_value: float | None
    drifted: bool
    reasons: list[str] = field(default_factory=list)

    @property
    def column(self) -> str:
        return self.stats.column

    def to_dict(self) -> dict[str, Any]:
        out = {**asdict(self.stats), "adjusted_p_value": self.adjusted_p_value}
        out.update(drifted=self.drifted, reasons=list(self.reasons))
        return {key: _finite_or_none(value) for key, value in out.items()}


Status = Literal["drift", "no_drift", "no_data", "insufficient_data"]


@dataclass(frozen=True)
class DriftResult:
    """Every verdict of one window; ``status`` says whether the window could be judged at all."""

    window_start: datetime
    window_end: datetime
    status: Status
    current_rows: int
    reference_rows: int
    verdicts: list[ColumnVerdict]
    thresholds: DriftThresholds
    backend: str

    @property
    def drifted_features(self) -> list[str]:
        return [v.column for v in self.verdicts if v.drifted and v.column != SCORE_COLUMN]

    @property
    def prediction_drift(self) -> bool:
        return any(v.drifted for v in self.verdicts if v.column == SCORE_COLUMN)

    def verdict(self, column: str) -> ColumnVerdict | None:
        return next((v for v in self.verdicts if v.column == column), None)


def adjust_p_values(p_values: list[float], method: Correction) -> list[float]:
    """Corrected p-values, in input order: Holm's step-down, Bonferroni, or Benjamini-Hochberg."""
    p = np.asarray(p_values, dtype=float)
    m = len(p)
    if m == 0:
        return []
    if method == "bonferroni":
        return np.minimum(p * m, 1.0).tolist()
    if method == "bh":
        return stats.false_discovery_control(p, method="bh").tolist()
    if method == "holm":
        order = np.argsort(p)
        stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
        adjusted = np.empty(m)
        adjusted[order] = np.minimum(stepped, 1.0)
        return adjusted.tolist()
    raise ValueError(f"correction must be holm, bonferroni or bh, got {method!r}")


def judge_columns(columns: list[ColumnStatistics], thresholds: DriftThresholds) -> list[ColumnVerdict]:
    """Verdict per column: distribution (corrected test and effect floor), missing values, type, presence."""
    tested = [c for c in columns if c.p_value is not None]
    adjusted = dict(
        zip(
            (c.column for c in tested),
            adjust_p_values([c.p_value for c in tested], thresholds.correction),
            strict=True,
        )
    )
    verdicts = []
    for c in columns:
        reasons = []
        p_adj = adjusted.get(c.column)
        floor = thresholds.min_ks_statistic if c.kind == "numeric" else thresholds.min_category_shift
        if p_adj is not None and p_adj < thresholds.alpha and c.shift is not None and c.shift >= floor:
            reasons.append("distribution")
        if c.reference_count == 0:
            reasons.append("new column")
        elif c.current_count == 0:
            reasons.append("column absent")
        else:
            if abs(c.current_missing - c.reference_missing) > thresholds.max_missing_change:
                reasons.append("missing values")
            if c.current_off_type > thresholds.max_off_type or (
                c.reference_type and c.current_type and c.current_type != c.reference_type
            ):
                reasons.append("type")
        drifted = any(reason not in INFORMATIVE_REASONS for reason in reasons)
        verdicts.append(ColumnVerdict(stats=c, adjusted_p_value=p_adj, drifted=drifted, reasons=reasons))
    return verdicts


def detect_drift(
    backend: DriftBackend,
    reference: Any,
    current: Any | None,
    window: tuple[datetime, datetime],
    thresholds: DriftThresholds,
) -> DriftResult:
    """Judge one window against the reference; a window without traffic or with too little gives no verdict."""
    reference_rows = backend.row_count(reference)
    common = {
        "window_start": window[0],
        "window_end": window[1],
        "thresholds": thresholds,
        "backend": backend.name,
    }
    if current is None or backend.row_count(current) == 0:
        return DriftResult(
            status="no_data", current_rows=0, reference_rows=reference_rows, verdicts=[], **common
        )
    rows = backend.row_count(current)
    columns = backend.compare(reference, current)
    if rows < thresholds.min_rows:
        verdicts = [ColumnVerdict(stats=c, adjusted_p_value=None, drifted=False) for c in columns]
        return DriftResult(
            status="insufficient_data",
            current_rows=rows,
            reference_rows=reference_rows,
            verdicts=verdicts,
            **common,
        )
    verdicts = judge_columns(columns, thresholds)
    status: Status = "drift" if any(v.drifted for v in verdicts) else "no_drift"
    return DriftResult(
        status=status, current_rows=rows, reference_rows=reference_rows, verdicts=verdicts, **common
    )


def _finite_or_none(value: Any) -> Any:
    """JSON has no inf or NaN (a new category makes chi-squared infinite); numpy scalars become Python ones."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
