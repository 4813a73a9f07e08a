"""The champion as monitoring reads it from MLflow: clear errors when there is none or MLflow is down."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.monitoring.monitored_model import MonitoredModel, find_champion, load_reference
from model_store.registry import NoChampionError
from model_store.settings import Settings
from tests.conftest import make_settings


def test_no_champion_is_a_clear_error(settings: Settings) -> None:
    with pytest.raises(NoChampionError, match="run the training pipeline first"):
        find_champion(settings)


def test_unreachable_mlflow_names_the_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    settings = make_settings(tmp_path / "rtml", monkeypatch)
    monkeypatch.setattr(
        settings, "mlflow_tracking_uri", "http://127.0.0.1:9"
    )  # discard port: nothing listens
    with pytest.raises(RuntimeError, match=r"MLflow at http://127.0.0.1:9 did not answer"):
        find_champion(settings)


def test_a_version_without_a_training_run_has_no_reference() -> None:
    with pytest.raises(FileNotFoundError, match="no training run"):
        load_reference(MonitoredModel(name="fraud_scorer", version="2", run_id=None, threshold=0.5))
