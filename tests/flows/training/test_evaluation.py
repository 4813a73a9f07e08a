"""Evaluation: metric definitions, the threshold for a target false-positive rate, slices, plots."""

from __future__ import annotations

import numpy as np
import pytest

from flows.training.dataset import TrainingSet
from flows.training.evaluation import (
    classification_metrics,
    decision_metrics,
    evaluate_holdout,
    precision_at_top,
    recall_at_fpr,
    threshold_for_fpr,
)
from flows.training.models import catboost_params, fit_baseline, fit_catboost, to_fit_data
from flows.training.plots import holdout_figures


def test_threshold_keeps_the_false_positive_rate_at_or_below_the_target() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(20_000) < 0.02).astype(int)
    scores = rng.random(20_000) * 0.5 + 0.5 * y * rng.random(20_000)
    threshold = threshold_for_fpr(y, scores, 0.01)
    fpr = decision_metrics(y, scores, threshold)["fpr_at_threshold"]
    assert 0.009 <= fpr <= 0.01
    # The lowest such threshold: the next lower negative score would exceed the target.
    negatives = np.sort(scores[y == 0])
    below = negatives[negatives < threshold].max()
    assert decision_metrics(y, scores, below)["fpr_at_threshold"] > 0.01
    with pytest.raises(ValueError, match="target_fpr"):
        threshold_for_fpr(y, scores, 0.0)


def test_metric_definitions_on_a_hand_made_case() -> None:
    y = np.array([0] * 98 + [1, 1])
    scores = np.r_[np.linspace(0, 0.5, 98), [0.9, 0.3]]
    assert precision_at_top(y, scores, 0.01) == 1.0  # the top 1 (of 100) is a fraud
    assert recall_at_fpr(y, scores, 0.01) == 0.5  # one fraud outranks all but 1 % of legitimate rows
    perfect = classification_metrics(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9]), 0.5)
    assert perfect["pr_auc"] == pytest.approx(1.0) and perfect["roc_auc"] == pytest.approx(1.0)
    one_class = classification_metrics(np.zeros(4, int), np.array([0.1, 0.2, 0.3, 0.4]), 0.5)
    assert np.isnan(one_class["pr_auc"]) and np.isfinite(one_class["brier"])


def test_holdout_report_compares_model_baseline_and_oracle_per_slice(synthetic_data: TrainingSet) -> None:
    spec = synthetic_data.spec
    train, validation = to_fit_data(synthetic_data.train, spec), to_fit_data(synthetic_data.validation, spec)
    model = fit_catboost(train, validation, spec, catboost_params({"depth": 4}, 0, 2, 150, 30))
    baseline = fit_baseline(train, spec, seed=0)
    report = evaluate_holdout(synthetic_data, model, baseline, target_fpr=0.05)

    for scorer in ("model", "baseline", "oracle"):
        for metric in ("pr_auc", "roc_auc", "log_loss", "brier", "recall_at_fpr", "precision_at_top_1pct"):
            assert np.isfinite(report.metrics[f"{scorer}.{metric}"]), f"{scorer}.{metric}"
    # The generator's true probability is the ceiling a model can reach, up to noise.
    assert report.metrics["model.roc_auc"] <= report.metrics["oracle.roc_auc"] + 0.02
    assert report.metrics["model.roc_auc_share_of_oracle"] > 0.9
    # A threshold set on validation for 5 % FPR lands near it on the holdout.
    assert 0.02 < report.metrics["model.fpr_at_threshold"] < 0.08
    assert set(report.slices["slice"]) == {"channel", "merchant_category"}
    online = report.slices.query("slice == 'channel' and value == 'online'").iloc[0]
    assert online["rows"] == (synthetic_data.test["channel"] == "online").sum()
    assert report.headline()["pr_auc"] == report.metrics["model.pr_auc"]

    figures = holdout_figures(synthetic_data, model, report, shap_rows=300)
    assert set(figures) == {"precision_recall", "roc", "calibration", "score_distribution", "shap_summary"}
    assert len(figures["precision_recall"].axes[0].lines) == 4  # model, baseline, oracle, fraud rate
    shap_axis = figures["shap_summary"].axes[0]
    assert {t.get_text() for t in shap_axis.get_yticklabels()} == set(spec.features)
