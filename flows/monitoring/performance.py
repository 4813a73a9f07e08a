"""Live model performance with delayed labels: logged predictions joined with the labels that have arrived.

Labels come from ``read_labels`` (inline in their transaction or from the labels table) and count only once
``label_timestamp <= as_of``, so the most recent predictions are mostly unlabelled (legitimate transactions
mature after days, chargebacks after weeks): judge a window that is old enough, and read ``label_coverage``
before the figures. Decay is called only when the live figure is below the holdout
figure by more than the tolerance *and* the bootstrap interval of the live figure lies below the holdout
figure, so a few unlucky labels do not retrain the model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from flows.feature_store.labels import read_labels
from model_store.profiles import SCORE_COLUMN

CALIBRATION_BINS = 10
BOOTSTRAP_RESAMPLES = 200

PerformanceStatus = Literal["decay", "ok", "insufficient_labels", "no_predictions"]


class PerformanceThresholds(BaseModel):
    """When live performance counts as decayed against the holdout figures the model was registered with."""

    window_hours: int = Field(168, gt=0, description="Hours of predictions judged together.")
    label_lag_hours: int = Field(
        336,
        ge=0,
        description="How far before the report's end those predictions end: legitimate labels mature after about "
        "7 days and chargebacks after 12 days (median), so younger predictions are mostly unlabelled.",
    )
    min_labels: int = Field(500, ge=1, description="Fewer labelled predictions give figures but no verdict.")
    min_positives: int = Field(20, ge=1, description="Fewer labelled frauds give figures but no verdict.")
    max_pr_auc_drop: float = Field(
        0.2, ge=0, le=1, description="Largest relative fall of PR-AUC below the holdout before it is decay."
    )
    max_recall_drop: float = Field(
        0.15, ge=0, le=1, description="Largest absolute fall of recall at the stored threshold before decay."
    )
    confidence: float = Field(0.95, gt=0, lt=1, description="Bootstrap interval used to rule out noise.")


@dataclass(frozen=True)
class CalibrationBin:
    """Rows whose scores fall in one quantile bin: mean score against the observed fraud rate."""

    mean_score: float
    fraud_rate: float
    count: int


@dataclass(frozen=True)
class PerformanceResult:
    """Live figures of one window of predictions, next to the holdout figures, with a verdict."""

    window_start: datetime
    window_end: datetime
    as_of: datetime
    model_version: str | None
    status: PerformanceStatus
    predictions: int
    labelled: int
    positives: int
    threshold: float | None
    pr_auc: float | None = None
    pr_auc_interval: tuple[float, float] | None = None
    recall: float | None = None
    recall_interval: tuple[float, float] | None = None
    precision: float | None = None
    mean_score: float | None = None
    fraud_rate: float | None = None
    expected_calibration_error: float | None = None
    calibration: list[CalibrationBin] = field(default_factory=list)
    holdout: dict[str, float] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    daily: list[dict[str, Any]] = field(default_factory=list)

    @property
    def label_coverage(self) -> float:
        return self.labelled / self.predictions if self.predictions else 0.0

    @property
    def decayed(self) -> bool:
        return self.status == "decay"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["label_coverage"] = self.label_coverage
        for key in ("window_start", "window_end", "as_of"):
            out[key] = out[key].isoformat()
        return out


def load_labels(validated_dir: Path, since: datetime, as_of: datetime) -> pd.DataFrame:
    """Labels known at ``as_of`` of validated transactions from ``since`` on (``transaction_id``, ``is_fraud``)."""
    labels = read_labels(validated_dir, since=pd.Timestamp(since), known_by=pd.Timestamp(as_of))
    return labels[["transaction_id", "is_fraud"]]


def join_labels(predictions: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """Each transaction's first logged prediction with its label (NaN while the label has not arrived)."""
    first = predictions.sort_values("event_timestamp").drop_duplicates("transaction_id", keep="first")
    return first.merge(labels, on="transaction_id", how="left")


def measure_performance(
    joined: pd.DataFrame,
    threshold: float | None,
    holdout: dict[str, float],
    window: tuple[datetime, datetime],
    as_of: datetime,
    model_version: str | None,
    thresholds: PerformanceThresholds,
    seed: int = 0,
) -> PerformanceResult:
    """Live PR-AUC, recall and precision at the stored threshold, calibration, and the decay verdict."""
    base = {
        "window_start": window[0],
        "window_end": window[1],
        "as_of": as_of,
        "model_version": model_version,
    }
    labelled = joined[joined["is_fraud"].notna()]
    y = labelled["is_fraud"].to_numpy(dtype=np.int64)
    scores = labelled[SCORE_COLUMN].to_numpy(dtype=np.float64)
    counts = {
        "predictions": len(joined),
        "labelled": len(y),
        "positives": int(y.sum()),
        "threshold": threshold,
    }
    if joined.empty:
        return PerformanceResult(status="no_predictions", holdout=holdout, **base, **counts)
    figures: dict[str, Any] = {"mean_score": float(scores.mean()) if len(y) else None}
    if len(y):
        figures["fraud_rate"] = float(y.mean())
        figures["calibration"], figures["expected_calibration_error"] = calibration_bins(y, scores)
    if 0 < y.sum() < len(y):
        figures.update(ranking_figures(y, scores, threshold, thresholds.confidence, seed))
    figures["daily"] = daily_figures(labelled, threshold)
    if len(y) < thresholds.min_labels or y.sum() < thresholds.min_positives:
        reason = (
            f"{len(y)} labelled predictions with {int(y.sum())} frauds; a verdict needs "
            f"{thresholds.min_labels} and {thresholds.min_positives}"
        )
        return PerformanceResult(
            status="insufficient_labels", holdout=holdout, reasons=[reason], **base, **counts, **figures
        )
    reasons = decay_reasons(figures, holdout, thresholds)
    return PerformanceResult(
        status="decay" if reasons else "ok", holdout=holdout, reasons=reasons, **base, **counts, **figures
    )


def ranking_figures(
    y: np.ndarray, scores: np.ndarray, threshold: float | None, confidence: float, seed: int
) -> dict[str, Any]:
    """PR-AUC, and recall and precision at the threshold, with percentile bootstrap intervals."""
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(seed)
    ranking = WeightedRanking(y, scores)
    flagged = scores >= threshold if threshold is not None else None
    boot_pr, boot_recall = [], []
    for _ in range(BOOTSTRAP_RESAMPLES):
        # A resample with replacement is the original rows weighted by how often each was drawn.
        weights = np.bincount(rng.integers(0, len(y), len(y)), minlength=len(y)).astype(np.float64)
        positives = weights[y == 1].sum()
        if 0 < positives < weights.sum():
            boot_pr.append(ranking.average_precision(weights))
            if flagged is not None:
                boot_recall.append(weights[(y == 1) & flagged].sum() / positives)
    tail = (1 - confidence) / 2 * 100
    out: dict[str, Any] = {
        "pr_auc": float(average_precision_score(y, scores)),
        "pr_auc_interval": _interval(boot_pr, tail),
    }
    if flagged is not None:
        out["recall"] = float(flagged[y == 1].mean())
        out["recall_interval"] = _interval(boot_recall, tail)
        out["precision"] = float(y[flagged].mean()) if flagged.any() else None
    return out


class WeightedRanking:
    """Scores sorted once, so the average precision of many weightings (bootstrap resamples) is cheap.

    Same definition as scikit-learn's ``average_precision_score`` with ``sample_weight`` (tied scores form
    one threshold), which costs a sort and input validation per call, too slow for hundreds of resamples.
    """

    def __init__(self, y: np.ndarray, scores: np.ndarray) -> None:
        order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
        self.order = order
        self.positive = np.asarray(y)[order] == 1
        ordered = np.asarray(scores, dtype=np.float64)[order]
        # The last row of each run of tied scores closes a threshold.
        self.closes = np.r_[np.flatnonzero(np.diff(ordered)), len(ordered) - 1]

    def average_precision(self, weights: np.ndarray | None = None) -> float:
        w = np.ones(len(self.order)) if weights is None else np.asarray(weights, dtype=np.float64)[self.order]
        tp = np.cumsum(np.where(self.positive, w, 0.0))[self.closes]
        seen = np.cumsum(w)[self.closes]
        if tp[-1] <= 0:
            return float("nan")
        precision = np.divide(tp, seen, out=np.zeros_like(tp), where=seen > 0)
        recall_gain = np.diff(np.r_[0.0, tp]) / tp[-1]
        return float(np.sum(recall_gain * precision))


def calibration_bins(y: np.ndarray, scores: np.ndarray) -> tuple[list[CalibrationBin], float]:
    """Quantile bins of the scores (fraud is rare: equal-width bins would leave the top nearly empty) and ECE."""
    edges = np.unique(np.quantile(scores, np.linspace(0, 1, CALIBRATION_BINS + 1)))
    index = np.clip(np.searchsorted(edges, scores, side="right") - 1, 0, max(len(edges) - 2, 0))
    bins, ece = [], 0.0
    for b in np.unique(index):
        mask = index == b
        mean_score, rate = float(scores[mask].mean()), float(y[mask].mean())
        bins.append(CalibrationBin(mean_score=mean_score, fraud_rate=rate, count=int(mask.sum())))
        ece += mask.sum() / len(y) * abs(mean_score - rate)
    return bins, float(ece)


def daily_figures(labelled: pd.DataFrame, threshold: float | None) -> list[dict[str, Any]]:
    """Labelled rows, frauds, PR-AUC and recall per UTC day of the window, for the trend within it."""
    from sklearn.metrics import average_precision_score

    if labelled.empty:
        return []
    days = pd.to_datetime(labelled["event_timestamp"], utc=True).dt.strftime("%Y-%m-%d")
    out = []
    for day, rows in labelled.groupby(days, sort=True):
        y = rows["is_fraud"].to_numpy(dtype=np.int64)
        s = rows[SCORE_COLUMN].to_numpy(dtype=np.float64)
        both = 0 < y.sum() < len(y)
        recall = float((s[y == 1] >= threshold).mean()) if threshold is not None and y.sum() else None
        out.append(
            {
                "day": day,
                "labelled": len(y),
                "positives": int(y.sum()),
                "pr_auc": float(average_precision_score(y, s)) if both else None,
                "recall": recall,
            }
        )
    return out


def decay_reasons(
    figures: dict[str, Any], holdout: dict[str, float], thresholds: PerformanceThresholds
) -> list[str]:
    """Why the live figures count as decayed (empty when they do not)."""
    reasons = []
    holdout_pr, live_pr = holdout.get("pr_auc"), figures.get("pr_auc")
    interval = figures.get("pr_auc_interval")
    if holdout_pr is not None and live_pr is not None and interval is not None:
        floor = holdout_pr * (1 - thresholds.max_pr_auc_drop)
        if live_pr < floor and interval[1] < holdout_pr:
            reasons.append(
                f"live PR-AUC {live_pr:.3f} (interval {interval[0]:.3f}-{interval[1]:.3f}) is below the holdout "
                f"{holdout_pr:.3f} by more than max_pr_auc_drop={thresholds.max_pr_auc_drop:.0%}"
            )
    holdout_recall, live_recall = holdout.get("recall"), figures.get("recall")
    interval = figures.get("recall_interval")
    recall_known = holdout_recall is not None and live_recall is not None and interval is not None
    if (
        recall_known
        and live_recall < holdout_recall - thresholds.max_recall_drop
        and interval[1] < holdout_recall
    ):
        reasons.append(
            f"live recall at the threshold {live_recall:.3f} (interval {interval[0]:.3f}-{interval[1]:.3f}) "
            f"is below the holdout {holdout_recall:.3f} by more than max_recall_drop={thresholds.max_recall_drop}"
        )
    return reasons


def _interval(samples: list[float], tail: float) -> tuple[float, float] | None:
    if len(samples) < 10:
        return None
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)
