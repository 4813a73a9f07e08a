"""The production configuration on the machine's PostgreSQL, selected by settings and environment alone.

MLflow with a PostgreSQL backend store, the Feast registry in PostgreSQL (SQL registry) and the Prefect server on
PostgreSQL. Each test creates its own database and drops it afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import httpx
import numpy as np
import pandas as pd
import psycopg
import pytest

from deploy.local import servers
from model_store import registry
from model_store.registry import PromotionPolicy, decide_promotion
from model_store.scorer import ModelContract
from model_store.settings import REPO_ROOT, Settings, clear_settings, get_settings
from model_store.tracking import ensure_experiment, mlflow_client
from tests.conftest import POSTGRES_DSN, make_settings

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def postgres_reachable() -> bool:
    try:
        with psycopg.connect(POSTGRES_DSN, connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


@pytest.fixture
def database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test (its name); dropped afterwards."""
    if not postgres_reachable():
        pytest.fail(
            f"PostgreSQL is not reachable at {POSTGRES_DSN}: run `make services` (deploy/local/services.sh)"
        )
    name = f"rtml_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def sqlalchemy_url(database: str, driver: str) -> str:
    """The test server's URL for ``database`` with a SQLAlchemy driver (``psycopg``, ``asyncpg``)."""
    url = urlparse(POSTGRES_DSN)
    return url._replace(scheme=f"postgresql+{driver}", path=f"/{database}").geturl()


def query(database: str, sql: str, *params: object) -> list[tuple]:
    url = urlparse(POSTGRES_DSN)._replace(path=f"/{database}").geturl()
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()


def test_embedded_defaults_stay_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("RTML_")] + ["MLFLOW_TRACKING_URI"]:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RTML_HOME", str(tmp_path))
    settings = Settings()
    assert settings.mlflow_tracking_uri == f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    assert settings.feast_env()["FEAST_REGISTRY_TYPE"] == "file"
    assert settings.feast_env()["FEAST_REGISTRY_PATH"].startswith(str(tmp_path))


def test_mlflow_on_postgres_logs_registers_promotes_and_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database: str
) -> None:
    from catboost import CatBoostClassifier

    uri = sqlalchemy_url(database, "psycopg")
    make_settings(tmp_path / "rtml", monkeypatch)
    monkeypatch.setenv(
        "MLFLOW_TRACKING_URI", uri
    )  # make_settings points it at SQLite: production overrides it
    clear_settings()
    settings = get_settings()
    assert settings.mlflow_tracking_uri == uri
    monkeypatch.chdir(tmp_path)

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"f0": rng.normal(size=300), "kind": rng.choice(["a", "b"], size=300)})
    target = (frame["f0"] > 0.5).astype(int)
    model = CatBoostClassifier(iterations=10, depth=2, verbose=False, cat_features=["kind"]).fit(
        frame, target
    )
    contract = ModelContract(
        decision_threshold=0.5,
        target_fpr=0.01,
        feature_service="fraud_scorer_v1",
        features=["f0", "kind"],
        categorical_features=["kind"],
    )
    import mlflow

    client = mlflow_client(settings)
    experiment = ensure_experiment(client, settings, "production-config")
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_metric("pr_auc", 0.9)
        info = mlflow.catboost.log_model(
            model, name="model", metadata=contract.model_dump(), pip_requirements=["catboost"]
        )
    version = registry.register_challenger(info.model_uri, contract, settings, run_id=run.info.run_id).version
    decision = decide_promotion({"pr_auc": 0.9, "roc_auc": 0.95}, None, PromotionPolicy())
    registry.record_decision(str(version), decision, settings)

    champion = registry.load_champion(settings)
    assert champion.version == str(version)
    assert champion.features == ["f0", "kind"]
    assert champion.score(frame.head(5)).shape == (5,)
    # The run, the registered model and its alias live in PostgreSQL.
    assert query(database, "select count(*) from runs where run_uuid = %s", run.info.run_id) == [(1,)]
    assert query(
        database,
        "select version from registered_model_aliases where name = %s and alias = 'champion'",
        settings.model_name,
    ) == [(int(version),)]


def test_mlflow_on_postgres_keeps_artifacts_under_the_settings_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database: str
) -> None:
    import mlflow

    make_settings(tmp_path / "rtml", monkeypatch)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlalchemy_url(database, "psycopg"))
    clear_settings()
    settings = get_settings()
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)

    client = mlflow_client(settings)
    with mlflow.start_run(experiment_id=ensure_experiment(client, settings, "production-artifacts")) as run:
        mlflow.log_text("probe", "probe.txt")
    assert not (workdir / "mlruns").exists(), "artifacts went to ./mlruns of the current directory"
    assert run.info.artifact_uri.startswith(settings.mlflow_artifact_root.as_uri())


def test_feast_registry_on_postgres(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database: str) -> None:
    settings = make_settings(
        tmp_path / "rtml", monkeypatch, feast_registry=sqlalchemy_url(database, "psycopg")
    )
    env = {**os.environ, **settings.feast_env(), "FEAST_FS_YAML_FILE_PATH": str(settings.feast_yaml)}
    assert env["FEAST_REGISTRY_TYPE"] == "sql"

    applied = subprocess.run(
        [str(BIN / "feast"), "apply"],
        cwd=settings.feast_repo_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert applied.returncode == 0, applied.stderr[-3000:]

    store = settings.feature_store()
    service = store.get_feature_service(settings.feature_service)
    read_back = {(p.name, f.name) for p in service.feature_view_projections for f in p.features}
    assert ("customer_activity", "txn_count_24h") in read_back
    assert ("transaction_request_features", "log_amount") in read_back
    stored = query(
        database,
        "select feature_service_name from feature_services where project_id = %s",
        settings.feast_project,
    )
    assert stored == [(settings.feature_service,)]
    assert not list((settings.home / "feast").glob("*.db")), "a file registry was written instead"


def test_prefect_server_on_postgres_runs_a_flow(tmp_path: Path, database: str) -> None:
    home = tmp_path / "prefect"
    home.mkdir()
    db_url = sqlalchemy_url(database, "asyncpg")
    with servers.prefect_server(home, database_url=db_url) as (api, _):
        code = (
            "from prefect import flow\n"
            "@flow(name='production-config-probe')\n"
            "def probe(x: int) -> int:\n"
            "    return x + 1\n"
            "print(probe(41))\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(PREFECT_API_URL=api, PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.strip().splitlines()[-1] == "42"
        runs = httpx.post(f"{api}/flow_runs/filter", json={"limit": 10}, timeout=10).json()
        assert [r["state_type"] for r in runs] == ["COMPLETED"]
    # The server kept it in PostgreSQL, not in a SQLite file under PREFECT_HOME.
    assert query(database, "select state_type from flow_run") == [("COMPLETED",)]
    assert not list(home.rglob("*.db"))
