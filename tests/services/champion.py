"""A small real champion for service tests: CatBoost trained on online features, logged and promoted in MLflow.

Used until the training pipeline offers a fixture of its own; the model reads exactly the feature service's
features, as a trained one does, so the service cannot tell the difference.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from model_store.scorer import ModelContract
from model_store.settings import Settings

TEST_THRESHOLD = 0.35


def online_feature_frame(settings: Settings, rows: dict[str, list[Any]]) -> pd.DataFrame:
    """The feature service's features for ``rows`` through Feast's SDK (the reference path)."""
    store = settings.feature_store()
    service = store.get_feature_service(settings.feature_service)
    return store.get_online_features(features=service, entity_rows=rows).to_df()


def feature_names(settings: Settings) -> tuple[list[str], list[str]]:
    """The feature service's output features in order, and which of them are strings."""
    from feast.types import String

    store = settings.feature_store()
    service = store.get_feature_service(settings.feature_service)
    names: list[str] = []
    categorical: list[str] = []
    for projection in service.feature_view_projections:
        for feature in projection.features:
            if feature.name not in names:
                names.append(feature.name)
                if feature.dtype == String:
                    categorical.append(feature.name)
    return names, categorical


def sample_rows(
    customers: list[int], merchants: list[int], n: int, seed: int, now: int
) -> dict[str, list[Any]]:
    """Random transactions between known entities, stamped within the last minutes."""
    rng = np.random.default_rng(seed)
    return {
        "customer_id": [int(c) for c in rng.choice(customers, n)],
        "merchant_id": [int(m) for m in rng.choice(merchants, n)],
        "amount": [round(float(a), 2) for a in rng.gamma(2.0, 60.0, n)],
        "channel": [str(c) for c in rng.choice(["chip", "contactless", "online"], n)],
        "transaction_unix": [int(now - s) for s in rng.integers(0, 600, n)],
    }


def log_champion(
    settings: Settings,
    rows: dict[str, list[Any]],
    experiment: str = "service-tests",
    seed: int = 0,
    promote: bool = True,
    feature_service: str | None = None,
    iterations: int = 40,
    depth: int = 4,
) -> str:
    """Train CatBoost on the online features of ``rows``, register it and (by default) make it champion; returns
    its version. ``seed`` gives another model; ``feature_service`` another contract (a version to refuse);
    ``iterations`` and ``depth`` a model of production size (the benchmarks')."""
    import mlflow
    from catboost import CatBoostClassifier

    from model_store import registry
    from model_store.scorer import prepare_features
    from model_store.tracking import ensure_experiment, mlflow_client

    names, categorical = feature_names(settings)
    frame = online_feature_frame(settings, rows)
    # A label the features explain (big amounts relative to habit, online, at night), plus noise.
    rng = np.random.default_rng(seed)
    logit = (
        1.5 * np.log1p(frame["amount_to_mean_7d"].astype(float).fillna(1.0))
        + 1.0 * (frame["channel"] == "online")
        + 0.8 * frame["is_night"].astype(float)
        - 2.0
        + rng.normal(0, 0.5, len(frame))
    )
    labels = (logit > 0).astype(int)
    inputs = prepare_features(frame, names, categorical)
    model = CatBoostClassifier(
        iterations=iterations,
        depth=depth,
        random_seed=seed,
        verbose=False,
        cat_features=categorical,
        thread_count=1,
    )
    model.fit(inputs, labels)
    contract = ModelContract(
        decision_threshold=TEST_THRESHOLD,
        target_fpr=0.05,
        feature_service=feature_service or settings.feature_service,
        features=names,
        categorical_features=categorical,
    )
    client = mlflow_client(settings)
    experiment_id = ensure_experiment(client, settings, experiment)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        info = mlflow.catboost.log_model(
            model,
            name="model",
            metadata=contract.model_dump(),
            input_example=inputs.head(5),
            pip_requirements=["catboost"],
        )
    version = registry.register_challenger(info.model_uri, contract, settings, run_id=run.info.run_id)
    if promote:
        registry.promote(str(version.version), "service test champion", settings)
    return str(version.version)


def log_synthetic_champion(settings: Settings, experiment: str = "build-service-tests") -> str:
    """A tiny champion that needs no feature store (for packaging tests); returns its version."""
    import mlflow
    from catboost import CatBoostClassifier

    from model_store import registry
    from model_store.tracking import ensure_experiment, mlflow_client

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {"amount": rng.gamma(2.0, 50.0, 300), "channel": rng.choice(["chip", "online"], 300)}
    )
    labels = ((frame["amount"] > 120) & (frame["channel"] == "online")).astype(int)
    model = CatBoostClassifier(iterations=10, depth=2, random_seed=0, verbose=False, cat_features=["channel"])
    model.fit(frame, labels)
    contract = ModelContract(
        decision_threshold=0.5,
        target_fpr=0.05,
        feature_service=settings.feature_service,
        features=["amount", "channel"],
        categorical_features=["channel"],
    )
    client = mlflow_client(settings)
    with mlflow.start_run(experiment_id=ensure_experiment(client, settings, experiment)) as run:
        info = mlflow.catboost.log_model(
            model, name="model", metadata=contract.model_dump(), pip_requirements=["catboost"]
        )
    version = registry.register_challenger(info.model_uri, contract, settings, run_id=run.info.run_id)
    registry.promote(str(version.version), "packaging test champion", settings)
    return str(version.version)
