"""The training pipeline's parameters: one pydantic model, shown as a form in the Prefect UI."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field, model_validator

from model_store.registry import PromotionPolicy


class TrainingParams(BaseModel):
    """How one training run builds its data, searches, fits, decides and gates."""

    feature_service: str | None = Field(
        None, description="Feast FeatureService the model reads (default: settings.feature_service)."
    )
    cutoff: datetime | None = Field(
        None,
        description="Training cut-off: labels that arrived later are not used (default: newest transaction).",
    )
    label_maturity_days: float = Field(
        0.0,
        ge=0,
        description="Leave out transactions younger than this at the cut-off (fraud labels arrive late).",
    )
    burn_in_days: float = Field(
        7.0,
        ge=0,
        description="Leave out the history's first days: windowed features (up to 7 days) are cut short there.",
    )
    validation_fraction: float = Field(
        0.15, gt=0, lt=1, description="Share of rows, by time, for validation."
    )
    test_fraction: float = Field(
        0.15, gt=0, lt=1, description="Newest share of rows held out for evaluation."
    )
    n_trials: int = Field(20, ge=1, description="Hyperparameter trials (Optuna).")
    tuning_minutes: float = Field(
        4.0, gt=0, description="Time budget of the search; no trial starts after it."
    )
    parallel_trials: int = Field(2, ge=1, description="Trials run at once (Prefect task runner threads).")
    tuning_rows: int = Field(
        60_000, ge=100, description="Trials fit on the most recent rows of the training set (time-ordered)."
    )
    negative_sample_rate: float = Field(
        0.25,
        gt=0,
        le=1,
        description="Share of legitimate training rows kept (reweighted so scores stay calibrated).",
    )
    max_evaluation_rows: int | None = Field(
        1_000_000,
        ge=1000,
        description="Labeled rows each of validation and the holdout keeps at most (a uniform sample beyond it).",
    )
    max_iterations: int = Field(
        1500, ge=10, description="CatBoost iterations cap; validation early stopping."
    )
    early_stopping_rounds: int = Field(50, ge=5)
    target_fpr: float = Field(
        0.01, gt=0, lt=1, description="False-positive rate the decision threshold is set for."
    )
    seed: int = Field(
        42, description="Seeds sampling, the search and CatBoost: same data and seed, same model."
    )
    promotion: PromotionPolicy = Field(default_factory=PromotionPolicy)

    @model_validator(mode="after")
    def _fractions_leave_training_rows(self) -> TrainingParams:
        if self.validation_fraction + self.test_fraction >= 0.9:
            raise ValueError(
                f"validation_fraction + test_fraction = {self.validation_fraction + self.test_fraction} "
                "leaves under 10 % of rows for training"
            )
        return self
