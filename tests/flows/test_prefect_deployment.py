"""prefect.yaml on a real Prefect server: `prefect deploy --all`, the scheduler, and a worker running a deployment.

One server per module (its own PREFECT_HOME and loopback port). The feature pipeline deployment runs through
`prefect worker start --run-once` with test settings passed as the flow run's job variables, so the worker
itself knows nothing of them; its outputs (offline Parquet, Redis keys of a unique Feast project) are checked
and removed afterwards.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest
import redis

from deploy.local import servers
from flows.deployments import FEATURE_PIPELINE, TRAINING_PIPELINE, WORK_POOL, declared_deployments
from model_store.settings import REPO_ROOT
from tests.conftest import REDIS_URL, delete_project_keys, unique_project

BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A Prefect server with the work pool and every deployment of prefect.yaml; yields (API URL, PREFECT_HOME)."""
    home = tmp_path_factory.mktemp("prefect_home")
    # The scheduler stays on: a test below checks that cron schedules become runs.
    with servers.prefect_server(home) as (api, _):
        servers.prefect_cli(api, home, "work-pool", "create", WORK_POOL, "--type", "process")
        servers.prefect_cli(api, home, "deploy", "--all")
        yield api, home


def api_deployments(api: str) -> dict[str, dict]:
    flows = {f["id"]: f["name"] for f in httpx.post(f"{api}/flows/filter", json={}, timeout=10).json()}
    found = httpx.post(f"{api}/deployments/filter", json={}, timeout=10).json()
    return {f"{flows[d['flow_id']]}/{d['name']}": d for d in found}


def test_deploy_all_registers_every_flow_on_the_process_pool(deployed: tuple[str, Path]) -> None:
    api, _ = deployed
    declared = declared_deployments()
    deployments = api_deployments(api)
    assert set(deployments) == set(declared)
    for name, deployment in deployments.items():
        assert deployment["work_pool_name"] == WORK_POOL, name
        assert deployment["parameters"] == declared[name].get("parameters", {}), name
        assert deployment["entrypoint"] == declared[name]["entrypoint"], name
        # The pull step sends flow runs to the checkout that was deployed, wherever the worker starts.
        (step,) = deployment["pull_steps"]
        assert step["prefect.deployments.steps.set_working_directory"]["directory"] == str(REPO_ROOT), name
        crons = sorted(s["schedule"]["cron"] for s in deployment["schedules"])
        assert crons == sorted(s["cron"] for s in declared[name].get("schedules") or []), name


def test_scheduler_turns_cron_schedules_into_scheduled_runs(deployed: tuple[str, Path]) -> None:
    """Guards the SQLAlchemy pin: under SQLAlchemy 2.1 Prefect 3.8's scheduler never creates cron runs."""
    api, _ = deployed
    scheduled = {name: d["id"] for name, d in api_deployments(api).items() if d["schedules"]}
    assert FEATURE_PIPELINE in scheduled
    deadline = time.monotonic() + 90
    while True:
        runs = httpx.post(
            f"{api}/flow_runs/filter",
            json={"flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}, "limit": 200},
            timeout=10,
        ).json()
        with_runs = {r["deployment_id"] for r in runs if r["auto_scheduled"]}
        if set(scheduled.values()) <= with_runs or time.monotonic() > deadline:
            break
        time.sleep(2)
    missing = sorted(name for name, id_ in scheduled.items() if id_ not in with_runs)
    assert not missing, f"no scheduled runs within 90 s for {missing}"


def test_monitoring_event_starts_the_training_deployment(deployed: tuple[str, Path]) -> None:
    """The drift report's alert event is what the training deployment's trigger reacts to."""
    api, home = deployed
    training = api_deployments(api)[TRAINING_PIPELINE]["id"]
    emit = (
        "from prefect.events import emit_event\n"
        "emit_event(event='rtml.monitoring.feature-drift', resource={'prefect.resource.id': 'rtml.model.fraud_scorer',"
        " 'prefect.resource.name': 'fraud_scorer'})\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", emit],
        cwd=REPO_ROOT,
        env=servers.clean_env(PREFECT_API_URL=api, PREFECT_HOME=str(home)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    deadline = time.monotonic() + 60
    while True:
        runs = httpx.post(
            f"{api}/flow_runs/filter", json={"deployments": {"id": {"any_": [training]}}}, timeout=10
        ).json()
        triggered = [r for r in runs if not r["auto_scheduled"]]
        if triggered or time.monotonic() > deadline:
            break
        time.sleep(1)
    # Remove them before a worker could pick them up: they are due now.
    for run in triggered:
        # The server answers 503 while SQLite is locked by its own services (the scheduler is on here).
        for _ in range(10):
            response = httpx.delete(f"{api}/flow_runs/{run['id']}", timeout=10)
            if response.status_code != 503:
                break
            time.sleep(1)
        response.raise_for_status()
    assert len(triggered) == 1, "one alert event starts one training run"


def write_small_raw_data(raw_dir: Path) -> tuple[int, int, int]:
    """A few thousand generated transactions as one raw batch; returns (transactions, customers, merchants)."""
    from flows.fraud_data.generator import GeneratorConfig, generate_raw_data, write_raw_data

    end = pd.Timestamp.now(tz="UTC").floor("h")
    config = GeneratorConfig(
        n_transactions=3_000,
        n_customers=300,
        n_merchants=40,
        days=14,
        start=end.floor("D") - pd.Timedelta(days=14),
        seed=11,
    )
    data = generate_raw_data(config)
    write_raw_data(data, raw_dir, "batch_001")
    return len(data.transactions), len(data.customers), len(data.merchants)


def test_worker_runs_the_feature_pipeline_deployment(deployed: tuple[str, Path], tmp_path: Path) -> None:
    api, home = deployed
    # Only the run made here may execute: pausing removes the scheduled runs (the scheduler test saw them).
    for deployment in api_deployments(api).values():
        httpx.post(f"{api}/deployments/{deployment['id']}/pause_deployment", timeout=10).raise_for_status()

    rtml_home = tmp_path / "rtml"
    n_transactions, n_customers, n_merchants = write_small_raw_data(rtml_home / "data" / "raw")
    project = unique_project("deploy")
    settings_env = {
        "RTML_HOME": str(rtml_home),
        "RTML_FEAST_PROJECT": project,
        "RTML_REDIS_URL": REDIS_URL,
        "MLFLOW_TRACKING_URI": f"sqlite:///{rtml_home / 'mlflow.db'}",
        "BENTOML_HOME": str(rtml_home / "bentoml"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    }
    try:
        created = servers.prefect_cli(
            api,
            home,
            "deployment",
            "run",
            FEATURE_PIPELINE,
            "--job-variable",
            f"env={json.dumps(settings_env)}",
        )
        flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", created.stdout).group(1)

        # The worker starts elsewhere and without the test settings: the pull step and job variables do the rest.
        worker = subprocess.run(
            [str(BIN / "prefect"), "worker", "start", "--pool", WORK_POOL, "--run-once"],
            cwd=tmp_path,
            env=servers.clean_env(PREFECT_API_URL=api, PREFECT_HOME=str(home)),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=300,
        )
        run = httpx.get(f"{api}/flow_runs/{flow_run_id}", timeout=10).json()
        assert run["state_type"] == "COMPLETED", (
            f"{run['state_name']}:\n{worker.stdout[-4000:]}\n{worker.stderr[-4000:]}"
        )

        activity = pd.read_parquet(rtml_home / "data" / "offline" / "customer_activity")
        assert len(activity) == n_transactions
        client = redis.Redis.from_url(REDIS_URL)
        try:
            keys = sum(
                1 for k in client.scan_iter(match=f"*{project}", count=1000) if not k.startswith(b"rtml:")
            )
        finally:
            client.close()
        # One Feast hash per customer and per merchant, each holding all of its feature views (the stream the
        # pipeline published its recent history to is ours, "rtml:").
        assert keys == n_customers + n_merchants
        # The plain functions' loggers reached the run's logs (prefect.yaml's job variables), not just the flow's.
        logs = httpx.post(
            f"{api}/logs/filter", json={"logs": {"flow_run_id": {"any_": [flow_run_id]}}}, timeout=10
        ).json()
        counts = [log["message"] for log in logs if log["name"] == "flows.feature_store.validation"]
        assert f"Batch batch_001: {n_transactions} valid, 0 quarantined" in counts, worker.stderr[-4000:]
    finally:
        delete_project_keys(project)
