"""Local MLflow stores: a prepared empty store per MLflow version, copied into stores that do not exist yet."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from model_store import tracking
from model_store.database_templates import seed_from_template
from model_store.settings import Settings


def tables(database: Path) -> set[str]:
    with sqlite3.connect(database) as connection:
        return {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_prepared_store_is_made_once_and_seeds_only_new_stores(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tracking, "CACHE_DIR", tmp_path / "cache")
    template = tracking.prepare_mlflow_database()
    assert template == tracking.mlflow_database_template() and {"experiments", "alembic_version"} <= tables(
        template
    )
    made = template.stat().st_mtime_ns
    assert tracking.prepare_mlflow_database() == template and template.stat().st_mtime_ns == made

    database = Path(str(settings.mlflow_tracking_uri).removeprefix("sqlite:///"))
    assert not database.exists()
    client = tracking.mlflow_client(settings)
    assert database.read_bytes() == template.read_bytes()  # a copy; MLflow only read it
    experiment = tracking.ensure_experiment(client, settings, "seeded")
    assert client.get_experiment(experiment).name == "seeded"

    seed_from_template(database, tracking.mlflow_database_template())  # an existing store is never replaced
    assert tracking.mlflow_client(settings).get_experiment_by_name("seeded") is not None
    assert not list(database.parent.glob(".mlflow-*"))  # no temporary copy left behind


def test_without_a_prepared_store_mlflow_creates_its_own(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tracking, "CACHE_DIR", tmp_path / "empty-cache")
    client = tracking.mlflow_client(settings)
    assert [e.name for e in client.search_experiments()] == ["Default"]
    assert not (tmp_path / "empty-cache").exists()
