"""What a training run records in MLflow: parameters, lineage, trials, metrics, plots, profile and the model."""

from __future__ import annotations

import json
import logging
import subprocess
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from pydantic import BaseModel

from flows.training.dataset import TrainingSet
from flows.training.tuning import TrialOutcome
from model_store.profiles import SCORE_COLUMN
from model_store.scorer import ModelContract
from model_store.settings import REPO_ROOT, Settings
from model_store.tracking import ensure_experiment, mlflow_client

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow import ActiveRun, MlflowClient

logger = logging.getLogger(__name__)


def git_commit() -> str:
    """The repository's HEAD commit, marked ``-dirty`` with uncommitted changes; ``unknown`` outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}-dirty" if dirty else head


def experiment_name(settings: Settings) -> str:
    return f"{settings.model_name}-training"


@contextmanager
def training_run(settings: Settings, run_name: str | None = None) -> Iterator[ActiveRun]:
    """An MLflow run on this thread (ended as FAILED if the body raises), tagged with the code version."""
    import mlflow

    client = mlflow_client(settings)
    experiment = ensure_experiment(client, settings, experiment_name(settings))
    commit = git_commit()
    tags = {"git_commit": commit, "mlflow.source.git.commit": commit.removesuffix("-dirty")}
    with mlflow.start_run(experiment_id=experiment, run_name=run_name, tags=tags) as run:
        yield run


def flat_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested parameters as MLflow params (``promotion.min_pr_auc``), values as text."""
    out: dict[str, str] = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            out.update(flat_params(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = str(value)
    return out


def log_training_set(data: TrainingSet, store: Any, source: str) -> None:
    """Split dates, row counts, the feature list and the lineage (source files with content hashes)."""
    import mlflow

    mlflow.log_params(
        {
            **data.split.as_params(),
            "data.cutoff": data.cutoff.isoformat(),
            "data.feature_service": data.spec.feature_service,
            "data.features": ",".join(data.spec.features),
            "data.categorical_features": ",".join(data.spec.categorical_features),
            "data.transactions_hash": data.lineage["transactions_hash"],
            "data.labels_hash": data.lineage["labels_hash"],
            "data.offline_features_hash": data.lineage["offline_features_hash"],
            "data.training_frame_hash": data.lineage["training_frame_hash"],
            **{f"data.rows_{k}": v for k, v in data.lineage["rows"].items()},
        }
    )
    mlflow.log_metrics(
        {f"data.fraud_rate_{name}": float(part["is_fraud"].mean()) for name, part in data.parts().items()}
    )
    mlflow.log_dict(data.lineage, "lineage/dataset.json")
    if store.mlflow is not None:
        # Feast's own record: an MLflow dataset input with the training frame's schema and digest.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*(integer column|interpreted in multiple ways).*")
            store.mlflow.log_training_dataset(
                data.train[[*data.spec.features, "is_fraud"]],
                dataset_name=f"{data.spec.feature_service}_train",
                source=source,
            )


def log_trial(client: MlflowClient, parent: ActiveRun, outcome: TrialOutcome) -> None:
    """One hyperparameter trial as a run nested under the training run."""
    run = client.create_run(
        parent.info.experiment_id,
        run_name=f"trial-{outcome.number:03d}",
        tags={"mlflow.parentRunId": parent.info.run_id, "trial.state": outcome.state},
    )
    run_id = run.info.run_id
    try:
        for key, value in outcome.params.items():
            client.log_param(run_id, key, value)
        client.log_metric(run_id, "seconds", outcome.seconds)
        if outcome.value is not None:
            client.log_metric(run_id, "validation_pr_auc", outcome.value)
        if outcome.best_iteration is not None:
            client.log_metric(run_id, "best_iteration", outcome.best_iteration)
        for step, value in outcome.intermediate.items():
            client.log_metric(run_id, "validation_pr_auc_curve", value, step=step)
        if outcome.error:
            client.set_tag(run_id, "trial.error", outcome.error[:4000])
    finally:
        client.set_terminated(run_id, status="FAILED" if outcome.error else "FINISHED")


def log_evaluation(metrics: Mapping[str, float], slices: pd.DataFrame, figures: Mapping[str, Figure]) -> None:
    """Holdout metrics (NaN ones skipped), the per-slice table, and the plots."""
    import mlflow

    mlflow.log_metrics({k: float(v) for k, v in metrics.items() if np.isfinite(v)})
    if not slices.empty:
        mlflow.log_table(slices, "evaluation/slices.json")
        for row in slices.itertuples(index=False):
            for metric in ("pr_auc", "recall_at_threshold"):
                value = float(getattr(row, metric))
                if np.isfinite(value):
                    mlflow.log_metric(f"slice.{row.slice}.{_metric_key(str(row.value))}.{metric}", value)
    for name, figure in figures.items():
        mlflow.log_figure(figure, f"plots/{name}.png")


def _metric_key(text: str) -> str:
    return "".join(c if c.isalnum() or c in "_-." else "_" for c in text)


def log_reference_profile(model_input: pd.DataFrame, holdout_scores: np.ndarray) -> None:
    """The drift reference: a whylogs profile of the training features merged with the holdout's scores."""
    from model_store.profiles import log_reference_profile as log_profile
    from model_store.profiles import profile_frame

    view = profile_frame(model_input).merge(profile_frame(pd.DataFrame({SCORE_COLUMN: holdout_scores})))
    log_profile(view)


def log_model(model: Any, contract: ModelContract, example: pd.DataFrame) -> str:
    """Log the CatBoost model with its signature, an input example and its contract; returns its model URI."""
    import catboost
    import mlflow
    from mlflow.models import infer_signature

    scores = np.asarray(model.predict_proba(example))[:, 1]
    info = mlflow.catboost.log_model(
        model,
        name="model",
        signature=infer_signature(example, scores),
        input_example=example,
        metadata=contract.model_dump(),
        # Listing requirements skips MLflow's slow inference subprocess.
        pip_requirements=[
            f"catboost=={catboost.__version__}",
            f"mlflow=={mlflow.__version__}",
            f"pandas=={pd.__version__}",
            f"numpy=={np.__version__}",
        ],
    )
    mlflow.log_dict(json.loads(contract.model_dump_json()), "model_contract.json")
    return info.model_uri


def log_seconds(step: str, started: float) -> None:
    """How long a step took (``seconds.<step>``), to see where a run's time goes."""
    import time

    import mlflow

    mlflow.log_metric(f"seconds.{step}", time.monotonic() - started)


def log_params(params: BaseModel, best: TrialOutcome) -> None:
    """The run's parameters and the chosen CatBoost parameters (``catboost.*``)."""
    import mlflow

    mlflow.log_params(
        {
            **flat_params(params.model_dump(mode="json")),
            **{f"catboost.{k}": str(v) for k, v in best.params.items()},
            "catboost.best_trial": str(best.number),
        }
    )


def log_tuning(
    outcomes: list[TrialOutcome], best: TrialOutcome, tuning_rows: int, training_rows: int
) -> None:
    """How the search went, and the fact that it ran on a subsample while the final model used everything."""
    import mlflow

    mlflow.log_params(
        {
            "tuning.data": (
                f"most recent {tuning_rows} of {training_rows} training rows after negative down-sampling "
                "(time-ordered); the final model is fit on the full training set"
            ),
            "tuning.trials_run": str(len(outcomes)),
        }
    )
    states = [o.state for o in outcomes]
    mlflow.log_metrics(
        {
            "tuning.best_validation_pr_auc": float(best.value or float("nan")),
            "tuning.completed": states.count("complete"),
            "tuning.pruned": states.count("pruned"),
            "tuning.failed": states.count("failed"),
        }
    )


def log_metrics(metrics: Mapping[str, float]) -> None:
    import mlflow

    mlflow.log_metrics({k: float(v) for k, v in metrics.items() if np.isfinite(v)})


def summarize(run: ActiveRun, version: str, decision: Any, metrics: Mapping[str, float]) -> dict[str, Any]:
    """What the flow returns: where to find the run, what was registered and what the gate decided."""
    keys = (
        "model.pr_auc",
        "model.roc_auc",
        "baseline.pr_auc",
        "baseline.roc_auc",
        "oracle.pr_auc",
        "oracle.roc_auc",
        "model.recall_at_fpr",
        "model.decision_threshold",
    )
    return {
        "run_id": run.info.run_id,
        "model_version": version,
        "promoted": decision.promote,
        "reasons": list(decision.reasons),
        **{k: round(float(metrics[k]), 5) for k in keys if k in metrics},
    }
