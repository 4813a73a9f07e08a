"""Fixtures every test folder shares: isolated settings, the real Redis, a temporary MLflow, Prefect."""

from __future__ import annotations

import ast
import inspect
import os
import re
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from model_store.settings import Settings, clear_settings, get_settings

# Fixture modules owned by each stage; a module provides the fixtures its stage's outputs feed.
pytest_plugins = [
    "tests.fixtures.pipeline",
    "tests.fixtures.training",
]

REDIS_URL = os.environ.get("RTML_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_DSN = os.environ.get("RTML_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")

# Keep every library off the network and quiet, whatever the developer's shell says.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.setdefault("WHYLOGS_NO_ANALYTICS", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")


def unique_project(prefix: str = "t") -> str:
    """A Feast project name no other test uses: it suffixes every Redis key, which isolates tests."""
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def leading_patches(function: Callable[..., object]) -> list[str]:
    """The libraries whose ``libraries.<name>.apply_patches()`` an entry point calls before any other statement."""
    (definition,) = ast.parse(textwrap.dedent(inspect.getsource(function))).body
    body = definition.body[1:] if ast.get_docstring(definition) else definition.body
    applied = []
    for statement in body:
        call = ast.unparse(statement.value.func) if isinstance(statement, ast.Expr) else ""
        match = re.fullmatch(r"libraries\.(\w+)\.apply_patches", call)
        if match is None:
            break
        applied.append(match.group(1))
    return applied


def make_settings(home: Path, monkeypatch: pytest.MonkeyPatch, **overrides: object) -> Settings:
    """Settings rooted in ``home`` with a fresh Feast project, installed as the process's ``get_settings()``."""
    env = {
        "RTML_HOME": str(home),
        "RTML_FEAST_PROJECT": unique_project(),
        "RTML_REDIS_URL": REDIS_URL,
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow' / 'mlflow.db'}",
        "BENTOML_HOME": str(home / "bentoml"),
    }
    env.update({f"RTML_{k.upper()}": str(v) for k, v in overrides.items()})
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    (home / "mlflow").mkdir(parents=True, exist_ok=True)
    clear_settings()
    settings = get_settings()
    settings.export_feast_env()
    return settings


@pytest.fixture(autouse=True)
def _isolated_rtml_environment() -> Iterator[None]:
    """Code under test may export ``RTML_*`` (the demo's SQLite fallback does); none of it outlives the test."""
    before = {k: v for k, v in os.environ.items() if k.startswith("RTML_")}
    yield
    for key in [k for k in os.environ if k.startswith("RTML_") and k not in before]:
        del os.environ[key]
    os.environ.update(before)
    clear_settings()


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Per-test settings: a temporary home and its own Feast project on the shared Redis."""
    s = make_settings(tmp_path / "rtml", monkeypatch)
    yield s
    delete_project_keys(s.feast_project)
    clear_settings()


def delete_project_keys(project: str, url: str = REDIS_URL) -> None:
    """Remove the Redis keys of one test's Feast project, nothing else."""
    from deploy.local.servers import delete_project_keys as delete

    delete(url, project)


@pytest.fixture(scope="session")
def whylogs_patches() -> None:
    """whylogs patched for the session, as the processes that profile patch it (``model_store.libraries``)."""
    from model_store import libraries

    libraries.whylogs.apply_patches()


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One temporary Prefect API for the whole session (~8 s), started only by tests that run flows."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def declared_views() -> dict:
    """The windowed views as the repository declares them (``services/stream/windows.py``), by name."""
    from tests.fixtures.feature_repo import declared_windowed_views

    return declared_windowed_views()
