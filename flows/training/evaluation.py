"""Holdout evaluation: ranking and probability metrics, the decision threshold, and metrics per slice."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from flows.training.dataset import (
    ORACLE,
    SLICE_COLUMNS,
    TrainingSet,
    entity_frame,
    read_feature_spec,
    retrieve_features,
)
from flows.training.models import predict_scores, to_fit_data
from model_store.scorer import Scorer

# Headline metrics, logged for the model, the baseline, the oracle and each slice.
METRICS = ("pr_auc", "roc_auc", "log_loss", "brier", "recall_at_fpr", "precision_at_top_1pct")


def threshold_for_fpr(y: np.ndarray, scores: np.ndarray, target_fpr: float) -> float:
    """The lowest threshold whose false-positive rate on (y, scores) does not exceed ``target_fpr``.

    Scores at or above the threshold are flagged; ties at the threshold count as flagged.
    """
    if not 0 < target_fpr < 1:
        raise ValueError(f"target_fpr={target_fpr} must be in (0, 1)")
    negatives = np.sort(np.asarray(scores, dtype=np.float64)[np.asarray(y) == 0])[::-1]
    if negatives.size == 0:
        raise ValueError("no negative rows: a false-positive rate cannot be set")
    allowed = math.floor(target_fpr * negatives.size)
    if allowed >= negatives.size:
        return float(negatives[-1])
    # Flag strictly above the (allowed+1)-th highest negative score.
    return float(np.nextafter(negatives[allowed], np.inf))


def recall_at_fpr(y: np.ndarray, scores: np.ndarray, target_fpr: float) -> float:
    """Share of frauds caught when the threshold lets through at most ``target_fpr`` of legitimate rows."""
    threshold = threshold_for_fpr(y, scores, target_fpr)
    positives = np.asarray(y) == 1
    return float((np.asarray(scores)[positives] >= threshold).mean()) if positives.any() else float("nan")


def precision_at_top(y: np.ndarray, scores: np.ndarray, share: float = 0.01) -> float:
    """Fraud share among the top ``share`` of scores (what a review team that checks 1 % would find)."""
    n = max(1, math.ceil(share * len(scores)))
    top = np.argsort(-np.asarray(scores), kind="stable")[:n]
    return float(np.asarray(y)[top].mean())


def classification_metrics(y: np.ndarray, scores: np.ndarray, target_fpr: float) -> dict[str, float]:
    """The headline metrics of one score vector; NaN where a metric needs both classes and lacks one."""
    from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

    y = np.asarray(y, dtype=np.int64)
    p = np.clip(np.asarray(scores, dtype=np.float64), 1e-7, 1 - 1e-7)
    both = 0 < y.sum() < len(y)
    return {
        "pr_auc": float(average_precision_score(y, p)) if both else float("nan"),
        "roc_auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "brier": float(brier_score_loss(y, p)),
        "recall_at_fpr": recall_at_fpr(y, p, target_fpr) if both else float("nan"),
        "precision_at_top_1pct": precision_at_top(y, p),
    }


def compare_scorers(y: np.ndarray, scores: Mapping[str, np.ndarray], target_fpr: float) -> dict[str, float]:
    """Headline metrics of several scorers on the same rows, keyed ``<scorer>.<metric>``."""
    return {
        f"{name}.{metric}": value
        for name, s in scores.items()
        for metric, value in classification_metrics(y, s, target_fpr).items()
    }


def decision_metrics(y: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """What the stored threshold does on this data: precision, recall and false-positive rate."""
    y = np.asarray(y, dtype=np.int64)
    flagged = np.asarray(scores) >= threshold
    tp = int((flagged & (y == 1)).sum())
    fp = int((flagged & (y == 0)).sum())
    positives, negatives = int((y == 1).sum()), int((y == 0).sum())
    return {
        "precision_at_threshold": tp / (tp + fp) if tp + fp else float("nan"),
        "recall_at_threshold": tp / positives if positives else float("nan"),
        "fpr_at_threshold": fp / negatives if negatives else float("nan"),
    }


def slice_metrics(
    frame: pd.DataFrame,
    y: np.ndarray,
    scores: np.ndarray,
    columns: Iterable[str],
    threshold: float,
    target_fpr: float,
) -> pd.DataFrame:
    """Metrics per value of each slice column (rows, frauds, ranking metrics and the threshold's effect)."""
    rows = []
    y = np.asarray(y)
    scores = np.asarray(scores)
    for column in columns:
        if column not in frame.columns:
            continue
        values = frame[column].astype(object).where(frame[column].notna(), "missing").to_numpy()
        for value in sorted(set(values), key=str):
            mask = values == value
            metrics = classification_metrics(y[mask], scores[mask], target_fpr)
            rows.append(
                {
                    "slice": column,
                    "value": str(value),
                    "rows": int(mask.sum()),
                    "frauds": int(y[mask].sum()),
                    **{k: metrics[k] for k in ("pr_auc", "roc_auc", "recall_at_fpr")},
                    **decision_metrics(y[mask], scores[mask], threshold),
                }
            )
    return pd.DataFrame(rows)


@dataclass
class HoldoutReport:
    """The candidate on the holdout: its threshold (chosen on validation), metrics, slices and scores."""

    threshold: float
    target_fpr: float
    metrics: dict[str, float]
    slices: pd.DataFrame
    scores: dict[str, np.ndarray]
    y: np.ndarray

    def headline(self, scorer: str = "model") -> dict[str, float]:
        """One scorer's metrics without the prefix (what the promotion gate compares)."""
        prefix = f"{scorer}."
        return {k.removeprefix(prefix): v for k, v in self.metrics.items() if k.startswith(prefix)}


def evaluate_holdout(data: TrainingSet, model: Any, baseline: Any, target_fpr: float) -> HoldoutReport:
    """Score model, baseline and (when present) the generator's oracle on the test holdout.

    The decision threshold is set on validation for ``target_fpr`` and then measured on the holdout.
    """
    validation = to_fit_data(data.validation, data.spec)
    test = to_fit_data(data.test, data.spec)
    threshold = threshold_for_fpr(validation.y, predict_scores(model, validation.x), target_fpr)
    scores = {"model": predict_scores(model, test.x), "baseline": predict_scores(baseline, test.x)}
    if data.has_oracle:
        scores["oracle"] = data.test[ORACLE].to_numpy(np.float64)
    metrics = compare_scorers(test.y, scores, target_fpr)
    metrics.update({f"model.{k}": v for k, v in decision_metrics(test.y, scores["model"], threshold).items()})
    metrics["model.decision_threshold"] = threshold
    metrics["model.pr_auc_minus_baseline"] = metrics["model.pr_auc"] - metrics["baseline.pr_auc"]
    if "oracle" in scores:
        metrics["model.roc_auc_share_of_oracle"] = metrics["model.roc_auc"] / metrics["oracle.roc_auc"]
        metrics["model.pr_auc_share_of_oracle"] = metrics["model.pr_auc"] / metrics["oracle.pr_auc"]
    slices = slice_metrics(data.test, test.y, scores["model"], SLICE_COLUMNS, threshold, target_fpr)
    return HoldoutReport(threshold, target_fpr, metrics, slices, scores, test.y)


def score_on_holdout(scorer: Scorer, data: TrainingSet, store: Any) -> np.ndarray:
    """Another model version's scores on this run's holdout rows, with the features its own service defines.

    When its feature service is the candidate's, the holdout's features are reused; otherwise they are
    retrieved from Feast for the same transactions at the same times.
    """
    frame = data.test
    if scorer.feature_service != data.spec.feature_service:
        spec = read_feature_spec(store, scorer.feature_service)
        fetched = retrieve_features(store, spec, entity_frame(data.test))
        frame = data.test[["transaction_id"]].merge(fetched, on="transaction_id", how="left")
    return scorer.score(frame)
