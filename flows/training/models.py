"""The two models: a scikit-learn baseline and CatBoost with native categoricals, both fed by the contract.

Both read ``prepare_features`` output (``model_store.scorer``), the exact input the service gives the
champion, with the training set's row weights (negatives down-sampled for speed are weighted up, so
probabilities stay calibrated). CatBoost's class weighting, for the imbalance itself, is a searched parameter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from flows.training.dataset import LABEL, TIMESTAMP, WEIGHT, FeatureSpec
from model_store.scorer import prepare_features


@dataclass(frozen=True)
class FitData:
    """A model's inputs for one split: features as the model receives them, labels and row weights."""

    x: pd.DataFrame
    y: np.ndarray
    weight: np.ndarray


def to_fit_data(frame: pd.DataFrame, spec: FeatureSpec) -> FitData:
    weight = frame[WEIGHT].to_numpy(np.float64) if WEIGHT in frame.columns else np.ones(len(frame))
    return FitData(
        prepare_features(frame, spec.features, spec.categorical_features),
        frame[LABEL].to_numpy(np.int64),
        weight,
    )


def latest_rows(frame: pd.DataFrame, n: int) -> pd.DataFrame:
    """The ``n`` most recent rows: a time-ordered subsample closest to the validation period."""
    if n <= 0 or len(frame) <= n:
        return frame
    return frame.sort_values(TIMESTAMP, kind="stable").iloc[-n:].reset_index(drop=True)


def fit_baseline(train: FitData, spec: FeatureSpec, seed: int) -> Any:
    """Logistic regression on scaled numerics and one-hot categories: the bar CatBoost must clear."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric = [f for f in spec.features if f not in spec.categorical_features]
    preprocess = ColumnTransformer(
        [
            ("numeric", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric),
            (
                "categorical",
                OneHotEncoder(handle_unknown="ignore", min_frequency=20),
                spec.categorical_features,
            ),
        ]
    )
    pipeline = Pipeline(
        [
            ("preprocess", preprocess),
            # Newton steps suit many rows and few columns: a few iterations where lbfgs needs many.
            ("classifier", LogisticRegression(solver="newton-cholesky", max_iter=500, random_state=seed)),
        ]
    )
    pipeline.fit(train.x, train.y, classifier__sample_weight=train.weight)
    return pipeline


def catboost_params(
    searched: dict[str, Any], seed: int, thread_count: int, iterations: int, early_stopping_rounds: int
) -> dict[str, Any]:
    """Full CatBoost parameters: the searched ones plus what every fit shares."""
    params = {
        "loss_function": "Logloss",
        "eval_metric": "PRAUC",
        "iterations": iterations,
        "early_stopping_rounds": early_stopping_rounds,
        "use_best_model": True,
        "random_seed": seed,
        "thread_count": thread_count,
        "allow_writing_files": False,
        "verbose": False,
        **searched,
    }
    if params.get("auto_class_weights") in (None, "None"):
        params.pop("auto_class_weights", None)
    return params


def fit_catboost(
    train: FitData,
    validation: FitData,
    spec: FeatureSpec,
    params: dict[str, Any],
    callbacks: list[Any] | None = None,
) -> Any:
    """CatBoost with native categorical features, early-stopped on the validation set."""
    from catboost import CatBoostClassifier, Pool

    cat = spec.categorical_features
    model = CatBoostClassifier(**params)
    model.fit(
        Pool(train.x, train.y, cat_features=cat, weight=train.weight),
        eval_set=Pool(validation.x, validation.y, cat_features=cat, weight=validation.weight),
        callbacks=callbacks,
    )
    return model


def predict_scores(model: Any, x: pd.DataFrame) -> np.ndarray:
    """Probability of fraud for each row of model input."""
    return np.asarray(model.predict_proba(x))[:, 1]
