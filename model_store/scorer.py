"""What a model version promises its callers: the input it reads, the threshold it decides with, and scoring."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import DTypeLike
from pydantic import BaseModel, Field, model_validator

# What the model reads for a missing feature, offline (``prepare_features``) and in the service
# (``services/scorer/model.py``) alike. CatBoost refuses null categories, so "unknown" is spelled out; a
# missing number is NaN, which CatBoost handles natively.
MISSING_CATEGORY = "__missing__"
MISSING_NUMBER = float("nan")


class ModelContract(BaseModel):
    """Stored with every model version (MLmodel metadata and version tags): how to feed it and decide."""

    decision_threshold: float = Field(ge=0, le=1, description="Scores at or above it are declined as fraud.")
    target_fpr: float = Field(ge=0, le=1, description="False-positive rate the threshold was chosen for.")
    feature_service: str = Field(description="The Feast FeatureService the model's features come from.")
    features: list[str] = Field(min_length=1, description="Model input columns, in order.")
    categorical_features: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _categoricals_are_features(self) -> ModelContract:
        unknown = sorted(set(self.categorical_features) - set(self.features))
        if unknown:
            raise ValueError(f"categorical_features {unknown} are not among features {self.features}")
        return self


def missing_value(categorical: bool) -> str | float:
    """The value the model reads for a missing feature: ``MISSING_CATEGORY`` or ``MISSING_NUMBER`` (NaN)."""
    return MISSING_CATEGORY if categorical else MISSING_NUMBER


def category_values(values: Iterable[Any]) -> list[str]:
    """A categorical feature as the model reads it: text, ``MISSING_CATEGORY`` where a value is ``None``."""
    return [MISSING_CATEGORY if v is None else str(v) for v in values]


def number_values(values: Sequence[Any], dtype: DTypeLike = np.float64) -> np.ndarray:
    """Numeric features as the model reads them: floats, ``MISSING_NUMBER`` (NaN) where a value is ``None``.

    A sequence of columns gives a 2-D array, one row per column.
    """
    return np.array(values, dtype=dtype)


def row_layout(
    features: Sequence[str], categorical_features: Sequence[str]
) -> list[tuple[str, str | float, bool]]:
    """Per feature, in the order given: its name, its value when missing, and whether the model reads it as text.

    Resolved once per model, so scoring a row applies the defaults without looking anything up.
    """
    categorical = set(categorical_features)
    return [(name, missing_value(name in categorical), name in categorical) for name in features]


def prepare_features(
    frame: pd.DataFrame, features: Sequence[str], categorical_features: Sequence[str]
) -> pd.DataFrame:
    """The model's input from a frame of features: its columns in order, categories as text, the rest float64.

    A missing value (null or NaN) becomes the feature's ``missing_value``. Extra columns are dropped; a
    missing column or a non-numeric value in a numeric feature is refused with the column named, because a
    silently wrong input gives a confident wrong score.
    """
    missing = [name for name in features if name not in frame.columns]
    if missing:
        raise ValueError(f"feature column(s) {missing} are missing; the model reads {list(features)}")
    categorical = set(categorical_features)
    columns: dict[str, Any] = {}
    for name in features:
        column = frame[name]
        if name in categorical:
            present = column.astype(object).where(column.notna(), None)
            columns[name] = np.array(category_values(present.tolist()), dtype=object)
        else:
            try:
                columns[name] = number_values(pd.to_numeric(column, errors="raise"))
            except (TypeError, ValueError) as error:
                raise ValueError(f"feature column {name!r} must be numeric: {error}") from error
    return pd.DataFrame(columns, index=frame.index)


@dataclass(frozen=True)
class Scorer:
    """A loaded model version: the CatBoost model plus its contract, ready to score frames of features."""

    model: Any
    name: str
    version: str
    contract: ModelContract
    run_id: str | None = None

    @property
    def threshold(self) -> float:
        return self.contract.decision_threshold

    @property
    def features(self) -> list[str]:
        return self.contract.features

    @property
    def feature_service(self) -> str:
        return self.contract.feature_service

    def score(self, frame: pd.DataFrame) -> np.ndarray:
        """Fraud probability of each row (columns named as the contract's features; extra columns ignored)."""
        inputs = prepare_features(frame, self.contract.features, self.contract.categorical_features)
        return np.asarray(self.model.predict_proba(inputs))[:, 1]

    def decide(self, scores: np.ndarray) -> np.ndarray:
        """True where a score reaches the decision threshold."""
        return np.asarray(scores) >= self.contract.decision_threshold
