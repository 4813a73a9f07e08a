"""Models: negative down-sampling keeps calibration, CatBoost uses native categoricals and beats chance."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from flows.training.dataset import WEIGHT, TrainingSet, downsample_negatives, uniform_sample
from flows.training.models import (
    catboost_params,
    fit_baseline,
    fit_catboost,
    latest_rows,
    predict_scores,
    to_fit_data,
)


def test_downsampling_keeps_positives_and_reweights_negatives(synthetic_data: TrainingSet) -> None:
    frame = synthetic_data.train.drop(columns=[WEIGHT], errors="ignore")
    sampled = downsample_negatives(frame, 0.25, seed=1)
    assert sampled["is_fraud"].sum() == frame["is_fraud"].sum()
    negatives = sampled["is_fraud"] == 0
    assert negatives.sum() == pytest.approx(0.25 * (frame["is_fraud"] == 0).sum(), rel=0.1)
    assert set(sampled.loc[negatives, WEIGHT]) == {4.0}
    # Kept negatives are binomial: four standard deviations of the weighted count.
    spread = 4 * 4.0 * np.sqrt((frame["is_fraud"] == 0).sum() * 0.25 * 0.75)
    assert sampled[WEIGHT].sum() == pytest.approx(len(frame), abs=spread)
    assert sampled["event_timestamp"].is_monotonic_increasing
    assert len(downsample_negatives(frame, 1.0, seed=1)) == len(frame)
    with pytest.raises(ValueError, match="negative_sample_rate"):
        downsample_negatives(frame, 0.0, seed=1)


def test_uniform_sample_restores_the_class_balance(synthetic_data: TrainingSet) -> None:
    frame = synthetic_data.train.drop(columns=[WEIGHT], errors="ignore")
    sampled = uniform_sample(downsample_negatives(frame, 0.25, seed=1), seed=2)
    assert sampled["is_fraud"].mean() == pytest.approx(frame["is_fraud"].mean(), rel=0.35)


def test_latest_rows_is_the_most_recent_slice(synthetic_data: TrainingSet) -> None:
    recent = latest_rows(synthetic_data.train, 100)
    assert len(recent) == 100
    assert recent["event_timestamp"].min() > synthetic_data.train["event_timestamp"].iloc[-101]


def test_catboost_and_baseline_learn_the_signal_and_stay_calibrated(synthetic_data: TrainingSet) -> None:
    spec = synthetic_data.spec
    train = downsample_negatives(synthetic_data.train, 0.3, seed=0)
    fit_train, validation = to_fit_data(train, spec), to_fit_data(synthetic_data.validation, spec)
    test = to_fit_data(synthetic_data.test, spec)
    params = catboost_params(
        {"depth": 4, "learning_rate": 0.1}, seed=0, thread_count=2, iterations=200, early_stopping_rounds=30
    )
    model = fit_catboost(fit_train, validation, spec, params)
    baseline = fit_baseline(fit_train, spec, seed=0)

    assert sorted(model.get_cat_feature_indices()) == [
        spec.features.index(c) for c in spec.categorical_features
    ]
    scores = predict_scores(model, test.x)
    oracle = synthetic_data.test["oracle_probability"].to_numpy()
    assert roc_auc_score(test.y, scores) > 0.75
    assert roc_auc_score(test.y, predict_scores(baseline, test.x)) > 0.75
    # Weights undo the down-sampling: the average score tracks the true fraud probability.
    assert scores.mean() == pytest.approx(oracle.mean(), rel=0.4)
    assert model.get_best_iteration() < 200 or model.tree_count_ == 200


def test_model_input_refuses_a_frame_without_a_feature(synthetic_data: TrainingSet) -> None:
    with pytest.raises(ValueError, match="velocity"):
        to_fit_data(synthetic_data.test.drop(columns=["velocity"]), synthetic_data.spec)


def test_missing_values_and_unknown_categories_are_scored(synthetic_data: TrainingSet) -> None:
    spec = synthetic_data.spec
    fit_train = to_fit_data(synthetic_data.train, spec)
    params = catboost_params({}, seed=0, thread_count=1, iterations=30, early_stopping_rounds=10)
    model = fit_catboost(fit_train, to_fit_data(synthetic_data.validation, spec), spec, params)
    odd = pd.DataFrame(
        {
            "log_amount": [np.nan],
            "velocity": [None],
            "noise": [0.0],
            "channel": [None],
            "merchant_category": ["new"],
        }
    )
    score = predict_scores(model, to_fit_data(odd.assign(is_fraud=0), spec).x)
    assert 0 < score[0] < 1
