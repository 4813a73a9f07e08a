"""The model under watch, as MLflow knows it: the champion's version, run, threshold, holdout figures and
reference profile; and the monitoring runs that record each report next to it.

Reports are runs of the experiment ``<model_name>-monitoring``, tagged with the model version and its training
run, and the version carries a tag pointing at its latest report: logging every report into the training run
itself would bury its artifacts under hourly files.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from model_store.profiles import SCORE_COLUMN, load_reference_profile
from model_store.registry import CHALLENGER, CHAMPION, NoChampionError, version_by_alias
from model_store.settings import Settings, redacted_url
from model_store.tracking import ensure_experiment, mlflow_client

if TYPE_CHECKING:
    from whylogs.core import DatasetProfileView

    from flows.monitoring.report import ReportPaths

logger = logging.getLogger(__name__)

# Holdout figures the training run logs (flows/training/evaluation.py), by our name.
HOLDOUT_METRICS = {
    "pr_auc": "model.pr_auc",
    "recall": "model.recall_at_threshold",
    "precision": "model.precision_at_threshold",
}
LAST_REPORT_TAG = "monitoring.last_report_run"
LAST_STATUS_TAG = "monitoring.last_status"


@dataclass(frozen=True)
class MonitoredModel:
    """What monitoring needs to know about the champion."""

    name: str
    version: str
    run_id: str | None
    threshold: float | None
    holdout: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "run_id": self.run_id,
            "threshold": self.threshold,
        }


def find_champion(settings: Settings) -> MonitoredModel:
    """The champion of ``settings.model_name`` with its threshold and holdout figures; a clear error if none."""
    model = find_version(settings, CHAMPION)
    if model is None:
        raise NoChampionError(
            f"registered model {settings.model_name!r} has no {CHAMPION} at {redacted_url(settings.mlflow_tracking_uri)}: "
            "run the training pipeline first; there is nothing to monitor yet"
        )
    return model


def find_challenger(settings: Settings) -> MonitoredModel | None:
    """The challenger, scored in the shadow by the serving services; None when no version is challenging."""
    return find_version(settings, CHALLENGER)


def find_version(settings: Settings, alias: str) -> MonitoredModel | None:
    """The version under ``alias`` (None when unset); a clear error when MLflow does not answer."""
    from mlflow.exceptions import MlflowException

    try:
        return _read_version(settings, alias)
    except MlflowException as error:
        raise RuntimeError(
            f"MLflow at {redacted_url(settings.mlflow_tracking_uri)} did not answer for the {alias} of "
            f"{settings.model_name!r}: {error.message}; the drift report runs again on its next schedule"
        ) from error


def _read_version(settings: Settings, alias: str) -> MonitoredModel | None:
    import mlflow

    client = mlflow_client(settings)
    version = version_by_alias(client, settings.model_name, alias)
    if version is None:
        return None
    threshold = None
    try:
        info = mlflow.models.get_model_info(f"models:/{settings.model_name}/{version.version}")
        threshold = (info.metadata or {}).get("decision_threshold")
    except Exception as error:  # the tag below still holds the threshold for people browsing the registry
        logger.warning("could not read the MLmodel metadata of v%s: %s", version.version, error)
    if threshold is None and "decision_threshold" in version.tags:
        threshold = version.tags["decision_threshold"]
    metrics = client.get_run(version.run_id).data.metrics if version.run_id else {}
    holdout = {name: float(metrics[key]) for name, key in HOLDOUT_METRICS.items() if key in metrics}
    if "pr_auc" not in holdout:
        logger.warning(
            "run %s of v%s logs no holdout PR-AUC: decay cannot be judged", version.run_id, version.version
        )
    return MonitoredModel(
        name=settings.model_name,
        version=str(version.version),
        run_id=version.run_id,
        threshold=float(threshold) if threshold is not None else None,
        holdout=holdout,
        tags=dict(version.tags),
    )


def load_reference(model: MonitoredModel) -> DatasetProfileView:
    """The reference profile logged by the run that produced the champion."""
    if not model.run_id:
        raise FileNotFoundError(f"{model.name} v{model.version} has no training run: no reference profile")
    return load_reference_profile(model.run_id)


def log_report(
    settings: Settings,
    model: MonitoredModel,
    paths: ReportPaths,
    summary: dict[str, Any],
    experiment: str | None,
) -> str:
    """Record the report as a run of the monitoring experiment and point the model version at it."""
    from mlflow.exceptions import MlflowException

    try:
        return _log_report(settings, model, paths, summary, experiment)
    except MlflowException as error:
        raise RuntimeError(
            f"the report is written ({paths.html}) but MLflow at {redacted_url(settings.mlflow_tracking_uri)} refused it: "
            f"{error.message}"
        ) from error


def _log_report(
    settings: Settings,
    model: MonitoredModel,
    paths: ReportPaths,
    summary: dict[str, Any],
    experiment: str | None,
) -> str:
    import mlflow

    client = mlflow_client(settings)
    experiment_id = ensure_experiment(client, settings, experiment or f"{model.name}-monitoring")
    performance = summary.get("performance") or {}
    score = next((c for c in summary["columns"] if c["column"] == SCORE_COLUMN), None)
    metrics = {
        "current_rows": summary["rows"]["current"],
        "drifted_features": len(summary["drifted_features"]),
        "prediction_drift": int(summary["prediction_drift"]),
        "score_ks": score["statistic"] if score else None,
        "live_pr_auc": performance.get("pr_auc"),
        "live_recall": performance.get("recall"),
        "label_coverage": performance.get("label_coverage"),
    }
    tags = {
        "rtml.model_name": model.name,
        "rtml.model_version": model.version,
        "rtml.model_run_id": model.run_id or "",
        "rtml.report_status": summary["status"],
        "rtml.window_end": summary["window"]["end"],
    }
    window_end = summary["window"]["end"][:16]
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"drift-{window_end}", tags=tags) as run:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None})
        mlflow.log_artifact(str(paths.html), artifact_path="drift_report")
        mlflow.log_artifact(str(paths.json), artifact_path="drift_report")
    client.set_model_version_tag(model.name, model.version, LAST_REPORT_TAG, run.info.run_id)
    client.set_model_version_tag(model.name, model.version, LAST_STATUS_TAG, summary["status"])
    return run.info.run_id
