"""Evaluation plots as matplotlib figures (drawn off-screen), logged by the training run as artifacts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from flows.training.dataset import TrainingSet
from flows.training.evaluation import HoldoutReport
from flows.training.models import to_fit_data

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _figure(width: float = 6.5, height: float = 5.0) -> Figure:
    # The object API needs no display and no global pyplot state, so it is safe in worker threads.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def plot_precision_recall(y: np.ndarray, scores: Mapping[str, np.ndarray]) -> Figure:
    """Precision-recall curves of several scorers on the same rows, with their PR-AUC in the legend."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    fig = _figure()
    ax = fig.add_subplot()
    for name, s in scores.items():
        precision, recall, _ = precision_recall_curve(y, s)
        ax.plot(recall, precision, label=f"{name} (PR-AUC {average_precision_score(y, s):.3f})")
    ax.axhline(float(np.mean(y)), color="grey", linestyle=":", label=f"fraud rate {np.mean(y):.3%}")
    ax.set(
        xlabel="recall",
        ylabel="precision",
        title="Precision-recall on the holdout",
        xlim=(0, 1),
        ylim=(0, 1.02),
    )
    ax.legend(loc="upper right")
    return fig


def plot_roc(y: np.ndarray, scores: Mapping[str, np.ndarray], target_fpr: float | None = None) -> Figure:
    """ROC curves of several scorers (log-scaled false-positive axis, where fraud decisions live)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fig = _figure()
    ax = fig.add_subplot()
    for name, s in scores.items():
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(np.maximum(fpr, 1e-5), tpr, label=f"{name} (ROC-AUC {roc_auc_score(y, s):.3f})")
    if target_fpr:
        ax.axvline(target_fpr, color="grey", linestyle=":", label=f"target FPR {target_fpr:g}")
    ax.set_xscale("log")
    ax.set(
        xlabel="false-positive rate", ylabel="true-positive rate", title="ROC on the holdout", ylim=(0, 1.02)
    )
    ax.legend(loc="lower right")
    return fig


def plot_calibration(y: np.ndarray, scores: Mapping[str, np.ndarray], bins: int = 10) -> Figure:
    """Observed fraud rate against mean predicted probability, in equal-count bins of each scorer."""
    from sklearn.calibration import calibration_curve

    fig = _figure()
    ax = fig.add_subplot()
    top = 0.0
    for name, s in scores.items():
        observed, predicted = calibration_curve(y, s, n_bins=bins, strategy="quantile")
        ax.plot(predicted, observed, marker="o", label=name)
        top = max(top, float(np.max(predicted)), float(np.max(observed)))
    ax.plot([0, top], [0, top], color="grey", linestyle=":", label="perfectly calibrated")
    ax.set_xscale("symlog", linthresh=1e-3)
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set(xlabel="mean predicted probability", ylabel="observed fraud rate", title="Calibration (holdout)")
    ax.legend(loc="upper left")
    return fig


def plot_score_distribution(y: np.ndarray, scores: np.ndarray) -> Figure:
    """Histograms of the model's scores for legitimate and fraudulent rows (log-scaled counts)."""
    fig = _figure()
    ax = fig.add_subplot()
    edges = np.linspace(0, 1, 51)
    for label, name in ((0, "legitimate"), (1, "fraud")):
        ax.hist(scores[np.asarray(y) == label], bins=edges, alpha=0.6, label=name)
    ax.set_yscale("log")
    ax.set(xlabel="score", ylabel="rows", title="Score distribution by class (holdout)")
    ax.legend()
    return fig


def plot_shap_summary(shap_values: np.ndarray, x: pd.DataFrame, max_features: int = 20) -> Figure:
    """A SHAP summary: per feature, each row's SHAP value coloured by the feature's (rank-scaled) value.

    Features are ordered by mean absolute SHAP value; categorical features, which have no order, are grey.
    """
    importance = np.abs(shap_values).mean(axis=0)
    order = np.argsort(importance)[::-1][:max_features][::-1]
    fig = _figure(7.5, 0.35 * len(order) + 1.5)
    ax = fig.add_subplot()
    rng = np.random.default_rng(0)
    points = None
    for row, j in enumerate(order):
        values = shap_values[:, j]
        column = x.iloc[:, j]
        jitter = rng.uniform(-0.3, 0.3, len(values))
        if pd.api.types.is_numeric_dtype(column):
            colour = column.rank(pct=True).fillna(0.5).to_numpy()
            points = ax.scatter(values, row + jitter, c=colour, cmap="coolwarm", s=4, vmin=0, vmax=1)
        else:
            ax.scatter(values, row + jitter, color="grey", s=4)
    ax.set_yticks(range(len(order)), [x.columns[j] for j in order])
    ax.axvline(0, color="black", linewidth=0.5)
    ax.set(
        xlabel="SHAP value (impact on log-odds)", title="Feature importance: SHAP summary (holdout sample)"
    )
    if points is not None:
        fig.colorbar(points, ax=ax, label="feature value (low to high)", ticks=[0, 1])
    return fig


def holdout_figures(
    data: TrainingSet, model: Any, report: HoldoutReport, shap_rows: int = 2000
) -> dict[str, Figure]:
    """Every plot the training run logs, named by artifact file stem."""
    from catboost import Pool

    sample = data.test.sample(min(shap_rows, len(data.test)), random_state=0)
    x = to_fit_data(sample, data.spec).x
    # The last column of CatBoost's SHAP output is the expected value, not a feature.
    shap = np.asarray(
        model.get_feature_importance(Pool(x, cat_features=data.spec.categorical_features), type="ShapValues")
    )[:, :-1]
    curves = {{"model": "CatBoost"}.get(k, k): v for k, v in report.scores.items()}
    return {
        "precision_recall": plot_precision_recall(report.y, curves),
        "roc": plot_roc(report.y, curves, report.target_fpr),
        "calibration": plot_calibration(report.y, curves),
        "score_distribution": plot_score_distribution(report.y, report.scores["model"]),
        "shap_summary": plot_shap_summary(shap, x),
    }
