"""The served model: the registry's champion as a BentoML model, and fast CatBoost scoring of feature columns.

``save_bento_model`` (called by the ``build_service`` flow) stores the champion's CatBoost model in its native
``.cbm`` format (never a pickle) with the model contract and registry identity as metadata;
``load_serving_model`` reads it back from the bento being served, or from ``settings.bentoml_home`` in
development. Scoring feeds CatBoost plain rows or a ``FeaturesData`` with one thread, never a DataFrame,
whose conversion costs more than the model (figures: docs/architecture.md, "Why it is built this way").
Missing values get the defaults the model was trained with (``model_store.scorer``: NaN for numbers,
``MISSING_CATEGORY`` for categories), through the functions ``prepare_features`` uses for training and
offline scoring.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from model_store import libraries
from model_store.scorer import ModelContract, category_values, number_values, row_layout

if TYPE_CHECKING:
    import bentoml

    from model_store.scorer import Scorer
    from model_store.settings import Settings
    from services.scorer.explanations import LeafShap

logger = logging.getLogger(__name__)

MODEL_FILE = "model.cbm"
# Up to this many rows, a Pool of plain rows beats FeaturesData (whose named-column mapping has a fixed cost).
FEW_ROWS = 64
MODULE = "services.scorer.model"
APPROVE, DECLINE = "approve", "decline"


class ModelNotBuilt(LookupError):
    """No served model is in the BentoML store: the build_service flow has not imported the champion."""


class ServingModel:
    """A registered model version ready to score columns of features, with its threshold and identity."""

    def __init__(self, model: Any, name: str, version: str, contract: ModelContract) -> None:
        self.model = model
        # What every score calls: the same trees without the training parameters CatBoost re-parses per call.
        self._predictor = libraries.catboost.for_prediction(model)
        self.name = name
        self.version = version
        self.contract = contract
        self.threshold = contract.decision_threshold
        self.features = list(contract.features)
        self.categorical = list(contract.categorical_features)
        self.numeric = [f for f in contract.features if f not in set(contract.categorical_features)]
        trained_on = list(getattr(model, "feature_names_", None) or contract.features)
        if sorted(trained_on) != sorted(contract.features):
            raise ValueError(
                f"model {name} v{version} was trained on {trained_on}, its contract says {contract.features}"
            )
        # The model's own column order; each column's default for a missing value and whether it is text.
        self._row_layout = row_layout(trained_on, contract.categorical_features)
        self._categorical_positions = [i for i, (_, _, text) in enumerate(self._row_layout) if text]
        # Per contract feature: its name, whether it is text, and its index among the numeric or the text ones.
        self._input_layout = [
            (
                name,
                name in self.categorical,
                (self.categorical if name in self.categorical else self.numeric).index(name),
            )
            for name in self.features
        ]
        self._leaf_shap: LeafShap | None = None
        # Feature columns of the rows logged with the version (set when it is loaded from the registry).
        self.input_example: dict[str, list[Any]] | None = None

    def prepare_explanations(self, *references: Mapping[str, Sequence[Any]]) -> None:
        """Make ``explain`` fast: per-leaf SHAP values (``services/scorer/explanations.py``), filled and checked
        on the rows of ``references`` (feature columns)."""
        from services.scorer.explanations import LeafShap

        rows = {name: [v for columns in references for v in columns[name]] for name in self.features}
        if rows[self.features[0]]:
            self._leaf_shap = LeafShap.build(self.model, self._row_pool(rows, len(rows[self.features[0]])))

    def predict(self, columns: Mapping[str, Sequence[Any]]) -> np.ndarray:
        """Fraud probability per row; ``None`` values get the training defaults (``model_store.scorer``).

        A few rows go to CatBoost as a ``Pool`` of rows in the model's column order, the cheapest form for
        one row; more go as one ``FeaturesData``, whose fixed cost of naming columns is then spread over them.
        """
        n_rows = len(columns[self.features[0]])
        if n_rows <= FEW_ROWS:
            data = self._row_pool(columns, n_rows)
            return self._predictor.predict(data, prediction_type="Probability", thread_count=1)[:, 1]
        return self._predict_features_data(columns)

    def _row_pool(self, columns: Mapping[str, Sequence[Any]], n_rows: int) -> Any:
        """The rows in the model's column order, defaults applied, as a CatBoost ``Pool``."""
        return self._pool(self._rows(columns, n_rows))

    def _rows(self, columns: Mapping[str, Sequence[Any]], n_rows: int) -> list[list[Any]]:
        """The rows in the model's column order, defaults applied, categories as text."""
        return [
            [
                default if (v := columns[name][i]) is None else str(v) if text else v
                for name, default, text in self._row_layout
            ]
            for i in range(n_rows)
        ]

    def _pool(self, rows: list[list[Any]]) -> Any:
        from catboost import Pool

        return Pool(rows, cat_features=self._categorical_positions, thread_count=1)

    def predict_and_explain(
        self, columns: Mapping[str, Sequence[Any]], top: int
    ) -> tuple[np.ndarray, list[list[dict[str, Any]]]]:
        """Fraud probability per row, and per row the ``top`` features that moved it most: name, the value the
        model received and its signed contribution in log-odds (CatBoost's SHAP values: they and the expected
        value sum to the raw score). One pool of rows serves both."""
        n_rows = len(columns[self.features[0]])
        rows = self._rows(columns, n_rows)
        pool = self._pool(rows)
        probabilities = self._predictor.predict(pool, prediction_type="Probability", thread_count=1)[:, 1]
        if self._leaf_shap is not None:
            shap = self._leaf_shap.shap_values(pool)
        else:
            shap = self.model.get_feature_importance(data=pool, type="ShapValues", thread_count=1)[:, :-1]
        names = [name for name, _, _ in self._row_layout]
        order = np.argsort(-np.abs(shap), axis=1, kind="stable")[:, :top]
        reasons = [
            [
                {"feature": names[j], "value": received(rows[i][j]), "contribution": float(shap[i, j])}
                for j in order[i]
            ]
            for i in range(n_rows)
        ]
        return probabilities, reasons

    def _predict_features_data(self, columns: Mapping[str, Sequence[Any]]) -> np.ndarray:
        from catboost import FeaturesData

        num = cat = None
        if self.numeric:
            # float32 is what CatBoost computes in anyway.
            num = number_values([columns[name] for name in self.numeric], np.float32).T.copy()
        if self.categorical:
            cat = np.array(
                [category_values(columns[name]) for name in self.categorical], dtype=object
            ).T.copy()
        data = FeaturesData(
            num_feature_data=num,
            cat_feature_data=cat,
            num_feature_names=self.numeric or None,
            cat_feature_names=self.categorical or None,
        )
        # One thread: for one row threads only add start-up cost, and a worker per core already uses them all.
        return self._predictor.predict(data, prediction_type="Probability", thread_count=1)[:, 1]

    def decide_one(self, score: float) -> str:
        """``decline`` when the score reaches the stored threshold, else ``approve``."""
        return DECLINE if score >= self.threshold else APPROVE

    def decide(self, scores: np.ndarray) -> list[str]:
        """``decline`` where a score reaches the stored threshold (the contract's rule), else ``approve``."""
        threshold = self.threshold
        return [DECLINE if s >= threshold else APPROVE for s in scores.tolist()]

    def input_rows(self, columns: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
        """Per row, the features as the model receives them (defaults applied; numbers as floats, NaN where
        missing; categories as text): what the decision record keeps, like the training reference profile."""
        n_rows = len(columns[self.features[0]])
        # One array for every numeric column, transposed to rows: a few microseconds, not one array per column.
        numbers = number_values([columns[name] for name in self.numeric]).T.tolist() if self.numeric else []
        texts = [category_values(columns[name]) for name in self.categorical]
        return [
            {name: texts[j][i] if text else numbers[i][j] for name, text, j in self._input_layout}
            for i in range(n_rows)
        ]


def received(value: Any) -> float | str | None:
    """A row's value as an answer shows it: categories as text, numbers as floats, a missing number (NaN) as
    null."""
    if isinstance(value, str):
        return value
    number = float(value)
    return None if number != number else number


def model_store_path(settings: Settings) -> Path:
    """Where BentoML keeps models under ``settings.bentoml_home``."""
    return Path(settings.bentoml_home) / "models"


def save_bento_model(scorer: Scorer, settings: Settings) -> bentoml.Model:
    """Store a loaded registry version in the BentoML model store (native .cbm plus the contract as metadata).

    A model already stored for the same registered version is reused, so rebuilding a bento does not pile up
    copies.
    """
    import bentoml
    import catboost
    from bentoml.exceptions import NotFound

    store = model_store_path(settings)
    try:
        stored = libraries.bentoml.list_models(store, settings.model_name)
    except NotFound:
        stored = []
    for existing in stored:
        labels = existing.info.labels
        if labels.get("registered_model") == scorer.name and labels.get("model_version") == scorer.version:
            logger.info("BentoML model %s already holds %s v%s", existing.tag, scorer.name, scorer.version)
            return existing
    context = bentoml.models.ModelContext(
        framework_name="catboost", framework_versions={"catboost": catboost.__version__}
    )
    with libraries.bentoml.create_model(
        store,
        settings.model_name,
        module=MODULE,
        labels={"registered_model": scorer.name, "model_version": scorer.version},
        metadata={
            "registered_model": scorer.name,
            "model_version": scorer.version,
            "run_id": scorer.run_id or "",
            "contract": scorer.contract.model_dump(mode="json"),
        },
        context=context,
    ) as bento_model:
        scorer.model.save_model(bento_model.path_of(MODEL_FILE))
    logger.info("stored %s v%s as BentoML model %s", scorer.name, scorer.version, bento_model.tag)
    return bento_model


def find_bento_model(settings: Settings, in_bento: bool) -> bentoml.Model:
    """The newest stored model: the bento's own when serving a bento, else the one under ``bentoml_home``."""
    import bentoml
    from bentoml.exceptions import NotFound

    tag = f"{settings.model_name}:latest"
    try:
        if in_bento:
            return bentoml.models.get(tag)
        return libraries.bentoml.get_model(model_store_path(settings), tag)
    except NotFound as error:
        raise ModelNotBuilt(
            f"no model {tag!r} in the BentoML store at {model_store_path(settings)}: run the build_service flow "
            "(python -m flows.build_service) to import the registry's champion"
        ) from error


def load_serving_model(settings: Settings, in_bento: bool = False) -> ServingModel:
    """Load the stored champion with its contract (metadata written by ``save_bento_model``)."""
    from catboost import CatBoostClassifier

    bento_model = find_bento_model(settings, in_bento)
    if bento_model.info.module != MODULE:
        raise ModelNotBuilt(f"BentoML model {bento_model.tag} was not stored by {MODULE}; rebuild it")
    metadata = bento_model.info.metadata
    model = CatBoostClassifier()
    model.load_model(bento_model.path_of(MODEL_FILE))
    served = ServingModel(
        model=model,
        name=str(metadata["registered_model"]),
        version=str(metadata["model_version"]),
        contract=ModelContract.model_validate(metadata["contract"]),
    )
    logger.info("serving %s v%s from BentoML model %s", served.name, served.version, bento_model.tag)
    return served
