"""Where runs and models are recorded: MLflow's tracking and registry URI and the training experiment."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from model_store.database_templates import prepare_template, seed_from_template
from model_store.settings import CACHE_DIR, Settings, get_settings

if TYPE_CHECKING:
    from mlflow import MlflowClient


def chooses_artifact_location(settings: Settings) -> bool:
    """Whether we, not a tracking server, decide where artifacts go (SQLite or any other database store).

    A database store without a server would otherwise put artifacts in ``./mlruns`` of the current directory.
    """
    return not str(settings.mlflow_tracking_uri).startswith(("http://", "https://", "databricks"))


def mlflow_client(settings: Settings | None = None) -> MlflowClient:
    """A client for the tracking server and model registry the settings name; also points the fluent API there."""
    import mlflow

    settings = settings or get_settings()
    uri = str(settings.mlflow_tracking_uri)
    if chooses_artifact_location(settings):
        # SQLite needs its folder, artifacts need theirs; a server creates its own storage.
        settings.mlflow_artifact_root.mkdir(parents=True, exist_ok=True)
        db_path = uri.removeprefix("sqlite:///")
        if db_path != uri:
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)
            seed_from_template(Path(db_path), mlflow_database_template())
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def mlflow_database_template() -> Path:
    """Where the empty SQLite store of the installed MLflow version is kept."""
    from importlib.metadata import version

    return CACHE_DIR / f"mlflow-{version('mlflow')}.db"


def prepare_mlflow_database() -> Path:
    """Create an empty SQLite store once per MLflow version; new local stores start from a copy.

    A new store runs MLflow's migrations, most of its first client call's time.
    """

    def create(folder: Path) -> Path:
        import mlflow

        database = folder / "mlflow.db"
        mlflow.MlflowClient(tracking_uri=f"sqlite:///{database}").search_experiments(max_results=1)
        return database

    return prepare_template(mlflow_database_template(), create)


def ensure_experiment(client: MlflowClient, settings: Settings, name: str) -> str:
    """The id of experiment ``name``, created on first use with artifacts under the settings' artifact root.

    Without an explicit location an embedded store would put artifacts in ``./mlruns`` of whatever the current
    directory is; a tracking server keeps its own default.
    """
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    location = (
        (settings.mlflow_artifact_root / name).as_uri() if chooses_artifact_location(settings) else None
    )
    return client.create_experiment(name, artifact_location=location)
