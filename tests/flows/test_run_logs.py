"""Our modules' loggers reach the Prefect run they log in: a quarantine count and a drift alert, read back from
the API with the run's id (Prefect's ``logging.extra_loggers`` in pyproject.toml; the deployment test checks a
worker's run)."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from uuid import UUID

import pandas as pd
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.client.schemas.objects import Log
from prefect.context import get_run_context
from prefect.logging.handlers import APILogWorker

from flows.feature_store.validation import validate_batch
from flows.fraud_data.schema import customers_schema
from flows.monitoring.triggers import Alert, TriggerSettings, post_webhook
from model_store.settings import REPO_ROOT

RUN_LOGGERS = {"flows", "model_store"}


def customers_with_one_bad_row() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": [1, 2, 3],
            "account_created_at": pd.to_datetime(["2025-01-01", "2025-02-01", "2025-03-01"], utc=True),
            "home_region": ["north", "south", "east"],
            "card_type": ["debit", "credit", "debit"],
            "credit_limit": [1000.0, -5.0, 2500.0],  # a negative limit is quarantined
        }
    )


@task
def validate_customers() -> tuple[int, UUID]:
    result = validate_batch(customers_with_one_bad_row(), customers_schema, batch_name="customers-test")
    return len(result.quarantined), get_run_context().task_run.id


@flow
def logs_through_our_modules() -> tuple[int, UUID, UUID]:
    quarantined, task_run_id = validate_customers()
    # A drift alert as the drift report sends it when no webhook is configured: logged by triggers.
    post_webhook(
        Alert("feature_drift", "fraud_scorer", "1", "2 feature(s) drifted: amount, channel"),
        TriggerSettings(),
        {},
    )
    return quarantined, task_run_id, get_run_context().flow_run.id


async def read_run_logs(flow_run_id: UUID) -> list[Log]:
    async with get_client() as client:
        return await client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )


def test_plain_functions_log_to_the_run_they_are_called_in(prefect_harness: None) -> None:
    quarantined, task_run_id, flow_run_id = logs_through_our_modules()
    assert quarantined == 1
    APILogWorker.drain_all(timeout=30)
    logs = asyncio.run(read_run_logs(flow_run_id))

    (count,) = [log for log in logs if log.name == "flows.feature_store.validation"]
    assert count.message == "Batch customers-test: 2 valid, 1 quarantined"
    assert count.level == logging.INFO and count.task_run_id == task_run_id
    (alert,) = [log for log in logs if log.name == "flows.monitoring.triggers"]
    assert "no webhook configured; alert: 2 feature(s) drifted: amount, channel" in alert.message
    assert alert.level == logging.WARNING and alert.task_run_id is None


def test_prefect_processes_started_in_the_checkout_send_our_loggers() -> None:
    """Every Prefect process started in the checkout reads pyproject.toml's [tool.prefect]: flows run directly,
    and a worker's flow runs (they start in the deployment's working directory). Outside a run, records are
    dropped from the API quietly, not warned about."""
    probe = (
        "from prefect.settings import get_current_settings as s\n"
        "print(','.join(s().logging.extra_loggers), s().logging.to_api.when_missing_flow)\n"
        "import logging, prefect.main, flows.feature_store.validation\n"
        "logging.getLogger('flows.feature_store.validation').warning('outside any run')\n"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "-W", "error::UserWarning", "-c", probe],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    loggers, when_missing_flow = done.stdout.split()
    assert set(loggers.split(",")) == RUN_LOGGERS and when_missing_flow == "ignore"
