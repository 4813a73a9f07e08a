"""`make demo`: the platform's whole lifecycle on embedded defaults, step by step, with progress on the terminal.

This is the CLI surface. Each step runs the same flows a Prefect deployment runs, against a Prefect server
the demo starts (unless ``PREFECT_API_URL`` names one), with every deployment of ``prefect.yaml``: the drift
report's alert reaches the training deployment through the automation declared there, and a worker runs it,
as on a platform. ``DEMO_SMALL=1`` runs the same steps on small data.

The terminal shows the steps, progress and results (``deploy/local/steps.py``); the full log (Prefect's run
logs, our loggers, library warnings and prints) goes to ``demo.log`` in the demo's home.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pandas as pd

from deploy.local import servers
from deploy.local.replay import Replay, group_caught_up, replay, wait_caught_up
from deploy.local.rollout_drill import Probes, follow_the_gate
from deploy.local.steps import Bar, Steps
from flows.deployments import TRAINING_PIPELINE, WORK_POOL
from flows.fraud_data.generator import DriftSpec, GeneratorConfig, RawData, generate_raw_data, write_raw_data
from model_store import libraries
from model_store.settings import Settings, clear_settings, get_settings, redacted_url

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.objects import FlowRun

STEPS = 8
# The tuning logs one line per hyperparameter trial: the training's progress, in-process or read from the API.
TRIAL_LOGGER = "flows.training.tuning"
# Imported while the Prefect server starts; the service build's (BentoML) while DuckDB and CatBoost train the
# first model, with the GIL released; the drift report's (~2.5 s) while the service starts.
WARM_MODULES = ("feast", "feast.infra.offline_stores.duckdb", "flows.training_pipeline")
# How long the demo waits for the drift alerts' training run to appear. It outlasts a stall of a Prefect server
# on SQLite, whose busy timeout is a fixed 60 s: seen in 2 of 15 demos on one day, such a stall delayed the run.
RETRAINING_TIMEOUT_SECONDS = 150
# The drifted period is streamed in this many slices, each followed by a feature pipeline run.
STREAM_SLICES = 2
# The stream processes the demo runs beside the service.
STREAM_PROCESSES = ("processor", "traffic", "landing", "shadow")


@dataclass(frozen=True)
class DemoSize:
    name: str
    transactions: int
    customers: int
    merchants: int
    days: int
    drift_days: int
    trials: int
    tuning_minutes: float
    scored_one_by_one: int
    # Locking the bento's packages against the package index costs ~4 s; the small demo keeps the pins.
    lock_packages: bool = True
    training: dict[str, Any] = field(default_factory=dict)


FULL = DemoSize("demo-size", 1_000_000, 50_000, 5_000, 90, 10, 8, 1.0, 2_000)
# Small data holds ~300 frauds: every legitimate row is kept for training, and the PR-AUC floor is 5x a
# random scorer's (~0.01) rather than 10x, since on a holdout of ~70 frauds PR-AUC swings by +-0.05 run to run.
SMALL = DemoSize(
    "small",
    40_000,
    2_000,
    200,
    60,
    7,
    2,
    0.5,
    300,
    lock_packages=False,
    training={"negative_sample_rate": 1.0, "promotion": {"min_pr_auc": 0.05}},
)


def ensure_online_store(settings: Settings, steps: Steps) -> Settings:
    """Use Redis when it answers; otherwise fall back to Feast's embedded SQLite store and say so once."""
    import redis

    if settings.online_store == "sqlite":
        return settings
    try:
        redis.Redis.from_url(settings.redis_url, socket_connect_timeout=1).ping()
        steps.result(f"online store: Redis at {redacted_url(settings.redis_url)}")
        return settings
    except redis.AuthenticationError as error:
        # A Redis that answers and refuses the credentials is a configuration error, not a reason to fall back.
        raise RuntimeError(
            f"Redis at {redacted_url(settings.redis_url)} refused the credentials of RTML_REDIS_URL ({error}): "
            "set the user and password it expects (redis://user:password@host:port/db)"
        ) from None
    except redis.ConnectionError:
        steps.warn(
            f"No Redis answers at {redacted_url(settings.redis_url)}: falling back to Feast's embedded SQLite online store"
            " (set RTML_REDIS_URL or start redis-server to use Redis)."
        )
        os.environ["RTML_ONLINE_STORE"] = "sqlite"
        clear_settings()
        return get_settings()


def start_fresh(settings: Settings, steps: Steps) -> None:
    """Each demo starts from empty stores under the demo's home, so it tells the same story every time.

    That includes the demo's own Prefect server state: a run left "Running" by an interrupted demo would
    hold the training deployment's concurrency slot (a server named by PREFECT_API_URL is never touched),
    and its Feast project's keys on Redis: the stream and the window state of a previous run would make the
    processor take this run's transactions for ones it has counted already.
    """
    folders = ["data", "feast", "mlflow", "bentoml", "profiles", "reports"]
    if not os.environ.get("PREFECT_API_URL"):
        folders.append("prefect")
    for folder in folders:
        shutil.rmtree(settings.home / folder, ignore_errors=True)
    (settings.home / "mlflow").mkdir(parents=True, exist_ok=True)
    if settings.online_store == "redis" and (
        removed := servers.delete_project_keys(settings.redis_url, settings.feast_project)
    ):
        steps.result(
            f"removed the {removed:,} Redis keys of project {settings.feast_project!r} a previous run left"
        )


def data_end(now: pd.Timestamp) -> pd.Timestamp:
    """Where the demo's data ends: the last Monday 00:00 UTC at or before ``now``.

    Traffic follows hourly and weekly profiles, so data ending at another hour is other data: the small
    demo's first model scored ROC-AUC 0.73 to 0.85 over one day's runs, and failed the gate's floor at some
    hours. Ending on a week boundary, every run generates the same data, shifted by whole weeks.
    """
    day = now.tz_convert("UTC").floor("D")
    return day - pd.Timedelta(days=day.weekday())


def generate_demo_data(settings: Settings, size: DemoSize, end: pd.Timestamp) -> tuple[RawData, str]:
    """Generated raw data ending at ``end``; the first batch stops where the drift starts. Returns the drifted
    rest and a line that describes the data."""
    drift_start = end - pd.Timedelta(days=size.drift_days)
    config = GeneratorConfig(
        n_transactions=size.transactions,
        n_customers=size.customers,
        n_merchants=size.merchants,
        start=end - pd.Timedelta(days=size.days),
        days=size.days,
        drift=DriftSpec(start=drift_start, amount_inflation=1.4, channel_shift=0.3, new_fraud_pattern=True),
    )
    data = generate_raw_data(config)
    tx = data.transactions
    before = tx[tx["event_timestamp"] < drift_start]
    write_raw_data(RawData(data.customers, data.merchants, before), settings.raw_dir, "batch_0001_history")
    described = (
        f"{len(tx):,} transactions ({tx['is_fraud'].mean():.2%} fraud), {len(data.customers):,} customers,"
        f" {len(data.merchants):,} merchants; drift from {drift_start:%Y-%m-%d %H:%M} (amounts x1.4, 30 % of"
        " card-present moved online, a new card-testing pattern)"
    )
    drifted = tx[tx["event_timestamp"] >= drift_start].reset_index(drop=True)
    return RawData(data.customers, data.merchants, drifted), described


def settings_env(settings: Settings) -> dict[str, str]:
    """What a process the demo starts (the service, a worker) needs to use the demo's stores."""
    env = {
        "RTML_HOME": str(settings.home),
        "RTML_FEAST_REPO_PATH": str(settings.feast_repo_path),
        "RTML_ONLINE_STORE": settings.online_store,
        "RTML_REDIS_URL": settings.redis_url,
        "MLFLOW_TRACKING_URI": str(settings.mlflow_tracking_uri),
        "BENTOML_HOME": str(settings.bentoml_home),
        # The drift report reads the traffic log and the pipeline the landed transactions right after the stream:
        # the platform's defaults would wait five minutes and one.
        "RTML_TRAFFIC_FLUSH_SECONDS": "1",
        "RTML_LANDING_FLUSH_SECONDS": "1",
    }
    env.update({k: v for k, v in os.environ.items() if k.startswith("RTML_")})
    return env


@contextmanager
def prefect_api(settings: Settings, steps: Steps) -> Iterator[tuple[str, Path, Callable[[], None]]]:
    """The Prefect API the flows report to: ``PREFECT_API_URL`` if set, else a local server the demo starts.

    Yields at once, with the URL already in ``PREFECT_API_URL`` (Prefect reads its settings when first
    imported), and the wait for the server's health: the demo prepares its data while the server starts.
    """
    home = settings.home / "prefect"
    if api := os.environ.get("PREFECT_API_URL"):
        steps.result(f"Prefect: {api}")
        yield api, home, lambda: None
        return
    # The demo's story runs on events: cron schedules would start runs the story did not ask for.
    with servers.prefect_server(home, scheduler=False, wait=False) as (api, server_ready):
        steps.result(f"Prefect server: {api.removesuffix('/api')} (its own log: {home / 'server.log'})")
        os.environ["PREFECT_API_URL"] = api
        try:
            yield api, home, server_ready
        finally:
            deliver_prefect_logs()
            os.environ.pop("PREFECT_API_URL", None)


def deliver_prefect_logs(timeout: float = 10) -> None:
    """Send what the flows logged and emitted while the demo's server still runs: sent at exit instead, to a
    stopped server, Prefect retried for a minute before the demo could end (seen when the gate stopped it)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=timeout)
    EventsWorker.drain_all(timeout=timeout)


def prepare(settings: Settings, size: DemoSize, end: pd.Timestamp, steps: Steps) -> RawData:
    """What needs no Prefect server, done while it starts: the flows' imports, MLflow's store (created on first
    use), then the data."""
    from model_store.tracking import mlflow_client

    for module in WARM_MODULES:
        importlib.import_module(module)
    mlflow_client(settings).search_experiments(max_results=1)
    drifted, described = generate_demo_data(settings, size, end)
    steps.result(described)
    return drifted


def deploy(api: str, home: Path, size: DemoSize) -> None:
    """Every deployment of prefect.yaml, as a platform team applies them, with the demo's training sizes."""
    servers.deploy_all(api, home)
    set_deployment_parameters(TRAINING_PIPELINE, {"params": training_parameters(size)})


def stream_drifted_period(
    settings: Settings, url: str, drifted: RawData, size: DemoSize, steps: Steps
) -> dict[str, Any]:
    """Score the drifted period in slices of a few days, as live traffic: each transaction's decision goes to the
    stream, the window processor makes it part of its customer's and merchant's features before the next one is
    scored, and the landing writer turns the stream into raw files. After each slice the labels that had
    arrived come in as a chargeback feed and the feature pipeline runs (the hourly deployment's job, compressed).
    """
    import redis

    from flows.feature_pipeline import feature_pipeline
    from flows.fraud_data.generator import split_labels, write_labels
    from services.stream.processor import GROUP as PROCESSOR_GROUP

    tx = drifted.transactions
    _, labels = split_labels(tx)
    labels = labels[labels["label_timestamp"] <= pd.Timestamp.now(tz="UTC")]  # what the feed has sent by now
    slice_length = pd.Timedelta(days=size.drift_days) / STREAM_SLICES
    starts = (tx["event_timestamp"] - tx["event_timestamp"].min()) // slice_length
    slices = [rows for _, rows in tx.groupby(starts, sort=True)]
    per_slice = max(1, size.scored_one_by_one // len(slices))
    client = redis.Redis.from_url(settings.redis_url)
    caught_up = group_caught_up(client, settings.stream("transactions"), f"{PROCESSOR_GROUP}-0-of-1")
    replays: list[Replay] = []
    landed = 0
    try:
        with (
            httpx.Client(base_url=url, timeout=60) as http,
            steps.progress("scoring", total=len(tx), unit="transactions") as bar,
        ):
            for number, rows in enumerate(slices, start=1):
                bar.update(description=f"slice {number}/{len(slices)}: scoring in waves")
                replays.append(replay(http, rows, caught_up, one_by_one=per_slice, progress=bar.advance))
                landed += len(rows)
                bar.update(description=f"slice {number}/{len(slices)}: landing, labels, feature pipeline")
                wait_for_landing(settings, landed)
                write_labels(
                    labels[labels["transaction_id"].isin(rows["transaction_id"])],
                    settings.raw_dir,
                    f"labels_{number:04d}",
                )
                ingested = feature_pipeline()["transactions"]
                steps.result(
                    f"slice {number}/{len(slices)}: scored {len(rows):,} transactions in {replays[-1].waves:,} waves,"
                    f" landed from the stream and ingested {ingested:,}"
                )
    finally:
        client.close()
    answers = {k: v for r in replays for k, v in r.answers.items()}
    summary = Replay(
        answers=answers,
        single_ms=[ms for r in replays for ms in r.single_ms],
        batch_ms=[ms for r in replays for ms in r.batch_ms],
        freshness_ms=[ms for r in replays for ms in r.freshness_ms],
        waves=sum(r.waves for r in replays),
    ).summary()
    summary["served_vs_fresh"] = served_vs_fresh(settings, tx, answers)
    summary["burst"] = card_testing_burst(settings, tx, answers)
    return summary


def wait_for_landing(settings: Settings, rows: int, timeout: float = 120) -> None:
    """Wait until the landing writer has written ``rows`` transactions from the stream into the raw zone."""
    import pyarrow.parquet as pq

    from services.stream.landing import PREFIX

    deadline = time.monotonic() + timeout
    folder = settings.raw_dir / "transactions"
    while sum(pq.read_metadata(p).num_rows for p in folder.glob(f"{PREFIX}*.parquet")) < rows:
        if time.monotonic() > deadline:
            raise SystemExit(
                f"The landing writer did not land {rows:,} transactions in {timeout:.0f} s: see its log,"
                f" {settings.home / 'landing.log'}"
            )
        time.sleep(0.2)


def wait_for_background_consumers(settings: Settings) -> None:
    """Wait until the traffic log and the landing writer have written every decision published so far."""
    import redis

    from services.stream.landing import GROUP as LANDING_GROUP
    from services.stream.traffic import GROUP as TRAFFIC_GROUP

    client = redis.Redis.from_url(settings.redis_url)
    try:
        wait_caught_up(client, settings.stream("transactions"), (TRAFFIC_GROUP, LANDING_GROUP), timeout=90)
    except TimeoutError as exc:
        raise SystemExit(f"{exc}: {settings.home / 'traffic.log'}, {settings.home / 'landing.log'}") from exc
    finally:
        client.close()


def served_vs_fresh(
    settings: Settings, tx: pd.DataFrame, answers: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """The served model on the features as the service saw them, against the same model on point-in-time-fresh
    features (Feast's historical retrieval over the offline store) for the same transactions."""
    from flows.training.dataset import entity_frame, read_feature_spec, retrieve_features
    from model_store.registry import load_scorer

    version = next(iter(answers.values()))["model_version"]
    scorer = load_scorer(version, settings)
    store = settings.feature_store()
    features = retrieve_features(store, read_feature_spec(store, settings.feature_service), entity_frame(tx))
    fresh = pd.Series(scorer.score(features), index=features["transaction_id"])
    ids = tx["transaction_id"].to_numpy()
    served = np.array([answers[i]["fraud_probability"] for i in ids])
    fresh_scores = fresh.reindex(ids).to_numpy()
    y = tx["is_fraud"].to_numpy(dtype=float).astype(int)
    threshold = scorer.threshold
    agree = ((served >= threshold) == (fresh_scores >= threshold)).mean()
    return {
        "model_version": version,
        "served": _figures(y, served, threshold),
        "fresh": _figures(y, fresh_scores, threshold),
        "decisions_agree": float(agree),
        "max_score_difference": float(np.abs(served - fresh_scores).max()),
    }


def _figures(y: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    from sklearn.metrics import average_precision_score

    from flows.training.evaluation import decision_metrics

    return {
        "pr_auc": float(average_precision_score(y, scores)),
        "recall": decision_metrics(y, scores, threshold)["recall_at_threshold"],
    }


def card_testing_burst(
    settings: Settings, tx: pd.DataFrame, answers: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """The longest card-testing burst of the period (a card's fraudulent transactions minutes apart), each
    transaction with the velocity the service read for it and the score it gave."""
    import redis

    from services.stream.events import decode

    fraud = tx[tx["is_fraud"] == 1].sort_values("event_timestamp")
    gaps = fraud.groupby("customer_id")["event_timestamp"].diff().dt.total_seconds()
    bursty = fraud[(gaps < 600) | (gaps.shift(-1) < 600)]
    if bursty.empty:
        return []
    customer = bursty["customer_id"].value_counts().index[0]
    burst = tx[(tx["customer_id"] == customer)].sort_values("event_timestamp")
    burst = burst[
        burst["event_timestamp"]
        >= bursty.loc[bursty["customer_id"] == customer, "event_timestamp"].min() - pd.Timedelta("1h")
    ]
    wanted = set(burst["transaction_id"])
    client = redis.Redis.from_url(settings.redis_url)
    features: dict[str, dict[str, Any]] = {}
    try:
        for entry_id, fields in client.xrange(settings.stream("transactions")):
            if fields.get(b"decision") is None:
                continue
            event = decode(entry_id, fields)
            if event.transaction.transaction_id in wanted and event.decision is not None:
                features[event.transaction.transaction_id] = event.decision.features
    finally:
        client.close()
    return [
        {
            "time": f"{row.event_timestamp:%Y-%m-%d %H:%M:%S}",
            "amount": float(row.amount),
            "is_fraud": int(row.is_fraud),
            "txn_count_1h": features.get(row.transaction_id, {}).get("txn_count_1h"),
            "distinct_merchants_24h": features.get(row.transaction_id, {}).get("distinct_merchants_24h"),
            "score": answers[row.transaction_id]["fraud_probability"],
            "decision": answers[row.transaction_id]["decision"],
        }
        for row in burst.head(15).itertuples()
    ]


def wait_for_traffic_log(settings: Settings, transactions: pd.DataFrame, timeout: float = 90) -> int:
    """Wait until the traffic log has written a prediction for every decision the service published."""
    from model_store.profiles import ProfileStore

    store = ProfileStore(settings.profile_store, settings.model_name)
    start = transactions["event_timestamp"].min().floor("h").to_pydatetime()
    end = (transactions["event_timestamp"].max().floor("h") + pd.Timedelta("1h")).to_pydatetime()
    deadline = time.monotonic() + timeout
    while True:
        # Counted from Parquet metadata: reading the files would take CPU from the (niced) writer.
        logged = store.count_predictions(start, end)
        if logged >= len(transactions) or time.monotonic() > deadline:
            return logged
        time.sleep(0.5)


async def triggered_training_runs(client: PrefectClient, since: pd.Timestamp) -> list[FlowRun]:
    """Training flow runs automations created after ``since`` (not scheduled ones)."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    runs = await client.read_flow_runs(
        deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[TRAINING_PIPELINE.split("/")[1]])),
        limit=50,
    )
    return [run for run in runs if not run.auto_scheduled and run.created >= since]


async def wait_for_retraining(
    since: pd.Timestamp, bar: Bar, timeout: float = RETRAINING_TIMEOUT_SECONDS
) -> list[FlowRun]:
    """Every training run the alerts started, in its final state; none when no run appears within ``timeout``.

    Alerts firing together each trigger a run and the deployment's concurrency limit cancels all but one, when
    the worker takes them: the runs seen first are awaited (Prefect's client retries the 503s a server on SQLite
    answers while locked), then any created meanwhile. ``bar`` follows them meanwhile.
    """
    from prefect.client.orchestration import get_client
    from prefect.flow_runs import wait_for_flow_run

    deadline = time.monotonic() + timeout
    finished: dict[Any, FlowRun] = {}
    async with get_client() as client:
        while not (runs := await triggered_training_runs(client, since)) and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        following = asyncio.create_task(follow_training_runs(client, [run.id for run in runs], bar))
        try:
            while pending := [run.id for run in runs if run.id not in finished]:
                done = await asyncio.gather(
                    *(wait_for_flow_run(i, timeout=1800, client=client) for i in pending)
                )
                finished.update((run.id, run) for run in done)
                runs = await triggered_training_runs(client, since)
        finally:
            following.cancel()
    return list(finished.values())


async def follow_training_runs(client: PrefectClient, run_ids: list[Any], bar: Bar, every: float = 2) -> None:
    """Show on ``bar`` the state of the training run the worker took and its trials, from the run's logs."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
        LogFilterName,
    )

    while run_ids:
        runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=run_ids)))
        taken = [run for run in runs if run.state_name not in {"Cancelled", "Scheduled"}] or runs
        logs = await client.read_logs(
            LogFilter(flow_run_id=LogFilterFlowRunId(any_=run_ids), name=LogFilterName(any_=[TRIAL_LOGGER]))
        )
        trials = sum(1 for log in logs if is_trial_line(log.message))
        bar.update(description=f"training run {taken[0].name}: {taken[0].state_name}", completed=trials)
        await asyncio.sleep(every)


def is_trial_line(message: str) -> bool:
    return message.startswith("trial ")


@contextmanager
def counting_trials(bar: Bar) -> Iterator[None]:
    """Advance ``bar`` once per hyperparameter trial this process's training logs."""

    class TrialCounter(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if is_trial_line(record.getMessage()):
                bar.advance()

    logger, counter = logging.getLogger(TRIAL_LOGGER), TrialCounter()
    logger.addHandler(counter)
    try:
        yield
    finally:
        logger.removeHandler(counter)


def wait_for_run_processes(runs: list[FlowRun], timeout: float = 30) -> None:
    """Wait for the processes the worker started for ``runs`` to exit.

    A run's state is final before its process has finished exiting (sending its last logs, tearing down).
    Stopped then, the worker passed the signal on to it and hung until it was killed 20 s later.
    """
    deadline = time.monotonic() + timeout
    for run in runs:
        if not run.infrastructure_pid:  # a run cancelled before it started has no process
            continue
        pid = int(str(run.infrastructure_pid).rpartition(":")[2])
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)


def set_deployment_parameters(name: str, parameters: dict[str, Any]) -> None:
    """Give a deployment the demo's sizes (a platform keeps prefect.yaml's defaults)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentUpdate

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(name)
        client.update_deployment(deployment.id, DeploymentUpdate(parameters=parameters))


def training_parameters(size: DemoSize) -> dict[str, Any]:
    return {"n_trials": size.trials, "tuning_minutes": size.tuning_minutes, **size.training}


def run_training(size: DemoSize, steps: Steps) -> dict[str, Any]:
    from flows.training.params import TrainingParams
    from flows.training_pipeline import training_pipeline

    with (
        steps.progress("hyperparameter trials", total=size.trials, unit="trials") as bar,
        counting_trials(bar),
    ):
        return training_pipeline(TrainingParams(**training_parameters(size)))


def describe_training(result: dict[str, Any], steps: Steps) -> None:
    steps.result(
        f"CatBoost v{result['model_version']}: ROC-AUC {result.get('model.roc_auc', float('nan')):.4f}"
        f" (oracle {result.get('oracle.roc_auc', float('nan')):.4f}), PR-AUC {result.get('model.pr_auc', float('nan')):.4f}"
        f" (baseline {result.get('baseline.pr_auc', float('nan')):.4f}, oracle {result.get('oracle.pr_auc', float('nan')):.4f})"
    )
    verdict = "promoted to champion" if result["promoted"] else "stays challenger"
    steps.result(f"promotion gate: {verdict}: {'; '.join(result['reasons'])}")


def main() -> None:
    # Before anything imports Feast (``prepare`` warms it in the background); the flows patch what they need.
    libraries.typeguard.apply_patches()
    # MLflow's download progress bars would fill the log with carriage returns.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    size = SMALL if os.environ.get("DEMO_SMALL") == "1" else FULL
    started = time.perf_counter()
    settings = get_settings()
    end = data_end(pd.Timestamp.now(tz="UTC"))
    log_path = settings.home / "demo.log"
    with Steps(STEPS, log_path) as steps:
        steps.result(f"Demo on {size.name} data ending {end:%Y-%m-%d %H:%M} UTC; state in {settings.home}")
        steps.result(f"Full log (Prefect's run logs, our loggers, library warnings): {log_path}")
        run_demo(settings, size, end, started, steps)
        steps.result("Stopped the service and the Prefect server the demo started.")


def run_demo(settings: Settings, size: DemoSize, end: pd.Timestamp, started: float, steps: Steps) -> None:
    start_fresh(settings, steps)
    summary: dict[str, Any] = {"own_prefect_server": not os.environ.get("PREFECT_API_URL")}

    with ExitStack() as stack:
        steps.step("Generate data, validate it and materialize features")
        settings = ensure_online_store(settings, steps)
        api, prefect_home, server_ready = stack.enter_context(prefect_api(settings, steps))
        background = stack.enter_context(ThreadPoolExecutor(max_workers=3, thread_name_prefix="demo"))
        from flows.feature_pipeline import feature_pipeline
        from flows.feature_store.definitions import apply_definitions

        # `feast apply` runs in its own interpreter (~6 s); the pipeline's apply task waits for it to finish.
        applied = background.submit(apply_definitions, settings)
        preparing = background.submit(prepare, settings, size, end, steps)
        steps.status("generating the data while the Prefect server starts")
        server_ready()
        # Deployments matter from the drift report on; applying them overlaps the first pipeline and training.
        deployed = background.submit(deploy, api, prefect_home, size)
        drifted = preparing.result()
        summary["features"] = feature_pipeline()
        steps.result(f"feast apply: {applied.result() or 'definitions unchanged'}")
        steps.result(f"feature pipeline: {describe_features(summary['features'])}")

        steps.step("Train, track, register and promote the first champion")
        building = background.submit(importlib.import_module, "flows.build_service")
        first = run_training(size, steps)
        describe_training(first, steps)
        summary["first"] = first
        if not first["promoted"]:
            raise SystemExit(
                "The first model did not pass the promotion gate's floors, so there is no champion to serve."
                " The reasons are above and on the model version in MLflow; rerun `make demo`, or lower the"
                " floors with the training parameters `promotion.min_pr_auc` / `promotion.min_roc_auc`."
            )

        steps.step("Build the bento and start the service")
        deployed.result()
        steps.result(f"deployed every flow of prefect.yaml to the work pool {WORK_POOL!r}")
        building.result()
        from flows.build_service import BuildServiceParams, build_service

        bento = build_service(BuildServiceParams(lock_packages=size.lock_packages))
        locked = (
            "locked against the package index" if size.lock_packages else "pinned, not locked (small demo)"
        )
        steps.result(f"bento {bento['bento']}, packages {locked}")
        env = settings_env(settings)
        warmed = background.submit(importlib.import_module, "flows.drift_report")
        # The worker starts in step 4 and stops after the service: its last flow run exits meanwhile.
        worker = stack.enter_context(ExitStack())
        steps.status("starting the service and the stream processes")
        # Started before the service (they import for a few seconds), waited for after it.
        stream_ready = [
            stack.enter_context(servers.stream_process(name, env, settings.home / f"{name}.log", wait=False))
            for name in STREAM_PROCESSES
        ]
        url = stack.enter_context(servers.bento_service(bento["bento"], env, settings.home / "service.log"))
        for ready in stream_ready:
            ready()
        warmed.result()
        steps.result(f"service ready at {url} (its own log: {settings.home / 'service.log'})")
        steps.result(
            "stream processes ready: window processor, traffic log, landing writer, shadow scorer (their logs: "
            + ", ".join(str(settings.home / f"{name}.log") for name in STREAM_PROCESSES)
            + ")"
        )

        steps.step(f"Stream {len(drifted.transactions):,} transactions of the drifted period to the service")
        summary["traffic"] = stream_drifted_period(settings, url, drifted, size, steps)
        t = summary["traffic"]
        steps.result(
            f"/score one at a time: p50 {t['p50_ms']:.2f} ms, p99 {t['p99_ms']:.2f} ms; /score_batch: p50"
            f" {t['batch_ms']:.1f} ms per wave; {t['declined']:,} of {t['requests']:,} declined"
        )
        steps.result(
            f"features fresh per transaction: a decision's features visible to the next in p50"
            f" {t['freshness_p50_ms']:.0f} ms, p99 {t['freshness_p99_ms']:.0f} ms (the summary compares with"
            " point-in-time-fresh features)"
        )
        # The worker that will run the retraining starts while the service's (single-process) traffic-log
        # writer catches up: the other core is idle then.
        worker_ready = worker.enter_context(servers.prefect_worker(api, prefect_home, env, wait=False))
        retraining: list[FlowRun] = []
        worker.callback(wait_for_run_processes, retraining)
        steps.status("waiting for the service's traffic log")
        logged = wait_for_traffic_log(settings, drifted.transactions)
        steps.result(
            f"traffic log: {logged:,} predictions and their whylogs profiles written off the request path"
        )

        steps.step("Drift report over the drifted period")
        from flows.drift_report import DriftReportParams, drift_report
        from flows.monitoring.triggers import TriggerSettings

        reported_at = pd.Timestamp.now(tz="UTC")
        # The drifted period, which the service scored; its alerts reach the training deployment's automation.
        report = drift_report(
            DriftReportParams(
                end=end.to_pydatetime(),
                window_hours=size.drift_days * 24,
                triggers=TriggerSettings(start_training=False),
            )
        )
        summary["drift"] = report
        steps.result(f"{report['status']}: {report['message']}")
        steps.result(f"report: {report['report']['html']}")

        steps.step("Retrain on the new data; the promotion gate decides")
        steps.status("starting a Prefect worker")
        worker_ready()
        steps.status("")
        # Probe decisions from here on: the gate's promotion, if any, reaches the running service meanwhile.
        probes = stack.enter_context(Probes(url))
        with steps.progress("waiting for the alerts' training run", total=size.trials, unit="trials") as bar:
            runs = asyncio.run(wait_for_retraining(reported_at, bar))
        retraining.extend(runs)
        if not runs and report["status"] == "drift":
            raise SystemExit(
                f"The drift alerts started no training run within {RETRAINING_TIMEOUT_SECONDS} s. Look for errors"
                f" in the Prefect server's log ({prefect_home / 'server.log'}) and the worker's ({prefect_home / 'worker.log'})."
            )
        if not runs:
            steps.result("no training run was triggered (no drift past the thresholds): nothing to retrain")
        else:
            steps.result(f"the alerts started {len(runs)} training run(s); the worker took them")
            summary["retraining"] = [{"name": r.name, "state": r.state_name} for r in runs]
            for run in runs:
                steps.result(f"training run {run.name}: {run.state_name}")
            steps.result(f"worker log: {prefect_home / 'worker.log'}")
        from model_store.registry import describe

        summary["registry"] = describe()
        for line in summary["registry"]:
            steps.result(line)

        steps.step("The running service follows the registry to the gate's champion, without a restart")
        summary["rollout"] = follow_registry(settings, probes, first["model_version"], steps)

        steps.step("Summary")
        summary["seconds"] = time.perf_counter() - started
        summary["bento"] = bento["bento"]
        print_summary(settings, summary, api, steps)
        # For machines (the end-to-end test, CI): every step's result.
        (settings.home / "demo_summary.json").write_text(json.dumps(summary, indent=2, default=str))
        steps.status("stopping the service, the worker and the Prefect server")


def follow_registry(settings: Settings, probes: Probes, served: str, steps: Steps) -> dict[str, Any]:
    """Probe decisions while the champion moves (the gate's promotion, or a drill): the time from each alias
    move to the first decision by the new version, and the failed requests meanwhile."""
    from services.scorer.rollout import swap_bound_seconds
    from services.scorer.settings import get_service_settings

    steps.status("waiting for the service to decide with the gate's champion")
    moves = follow_the_gate(probes, served, settings)
    probes.stop()
    steps.status("waiting for the traffic log and the landing writer to take the probes' decisions")
    # They read once a second (paced); stopping them now would leave the last probes to their next start.
    wait_for_background_consumers(settings)
    steps.status("")
    bound = swap_bound_seconds(get_service_settings())
    for move in moves:
        took = f"{move.seconds:.2f} s" if move.seconds is not None else "never, within 60 s"
        steps.result(
            f"v{move.from_version} -> v{move.to_version} ({move.why}): first decision by v{move.to_version}"
            f" {took} after the alias moved (bound {bound:.0f} s); {move.errors} failed requests meanwhile"
        )
    if not moves:
        steps.result("no new version to move to: the service keeps its champion")
    answers = probes.answers
    steps.result(
        f"{len(answers):,} probe decisions from a card of its own, {probes.failed} failed; the last by"
        f" v{answers[-1].version if answers else '?'}, the registry's champion, with no restart"
    )
    return {
        "moves": [m.as_dict() for m in moves],
        "probes": len(answers),
        "failed": probes.failed,
        "last_version": answers[-1].version if answers else None,
        "bound_seconds": bound,
    }


def describe_freshness(traffic: dict[str, Any], steps: Steps) -> None:
    """Freshness, served against point-in-time-fresh, and the burst, as the summary shows them too."""
    fresh = traffic["served_vs_fresh"]
    steps.result(
        f"features fresh per transaction: decision published to its features visible in p50"
        f" {traffic['freshness_p50_ms']:.0f} ms, p99 {traffic['freshness_p99_ms']:.0f} ms ({traffic['waves']:,} waves)"
    )
    served, pit = fresh["served"], fresh["fresh"]
    steps.result(
        f"model v{fresh['model_version']} on the drifted period: served PR-AUC {served['pr_auc']:.4f}, recall"
        f" {served['recall']:.1%}; on point-in-time-fresh features PR-AUC {pit['pr_auc']:.4f}, recall"
        f" {pit['recall']:.1%}; decisions equal for {fresh['decisions_agree']:.2%} of transactions"
    )
    if traffic["burst"]:
        steps.result("a card-testing burst, transaction by transaction (time, amount, txn_count_1h, score):")
        for row in traffic["burst"]:
            steps.result(
                f"  {row['time']}  {row['amount']:8.2f}  {row['txn_count_1h'] or 0:>3}  {row['score']:.3f}"
                f"  {row['decision']}{'  (fraud)' if row['is_fraud'] else ''}"
            )


def describe_features(features: dict[str, int]) -> str:
    """``{'transactions': 35250, 'customer_profile': 2000, ...}`` as one line."""
    rows = ", ".join(
        f"{view} {count:,}" for view, count in features.items() if view not in ("transactions", "labels")
    )
    labels = f", {features['labels']:,} labels" if features.get("labels") else ""
    return f"{features['transactions']:,} transactions{labels} ingested; entities written online: {rows}"


def print_summary(settings: Settings, summary: dict[str, Any], api: str, steps: Steps) -> None:
    """What the demo showed, where to look, and how to go on."""
    first, traffic, drift = summary["first"], summary["traffic"], summary["drift"]
    say = steps.result
    say(
        f"data: {summary['features']['transactions']:,} transactions before the drift, {traffic['requests']:,} after"
    )
    say(
        f"model v{first['model_version']}: ROC-AUC {first.get('model.roc_auc', 0):.4f} vs oracle"
        f" {first.get('oracle.roc_auc', 0):.4f}; PR-AUC {first.get('model.pr_auc', 0):.4f} vs oracle"
        f" {first.get('oracle.pr_auc', 0):.4f}"
    )
    say(f"serving: p50 {traffic['p50_ms']:.2f} ms, p99 {traffic['p99_ms']:.2f} ms one request at a time")
    describe_freshness(traffic, steps)
    say(f"drift verdict: {drift['status']}: {drift['message']}")
    moves = [m for m in summary["rollout"]["moves"] if m["seconds"] is not None]
    if moves:
        say(
            f"model rollout: {len(moves)} alias move(s) reached traffic in at most"
            f" {max(m['seconds'] for m in moves):.1f} s, {summary['rollout']['failed']} failed requests, no restart"
        )
    say(f"reports: {settings.report_store}")
    say(f"full log: {steps.log_path} (Prefect's run logs, our loggers, library warnings)")
    say(f"MLflow UI:  .venv/bin/mlflow ui --backend-store-uri {settings.mlflow_tracking_uri}")
    if summary["own_prefect_server"]:
        say(
            f"Prefect UI (every run and its logs): PREFECT_HOME={settings.home / 'prefect'} .venv/bin/prefect"
            " server start --no-services, then http://127.0.0.1:4200"
        )
    else:
        say(f"Prefect UI (every run and its logs): {api.removesuffix('/api')}")
    say(
        "call the service: .venv/bin/bentoml serve services.scorer.service:OnlineScorer, then curl -X POST"
        " 'localhost:3000/score?explain=3' -H 'content-type: application/json' -d '{\"transaction_id\": \"t1\","
        ' "customer_id": 1, "merchant_id": 1, "amount": 42.0, "timestamp": "2026-01-01T12:00:00Z",'
        ' "channel": "online"}\''
    )
    say(f"whole lifecycle in {summary['seconds'] / 60:.1f} minutes")


if __name__ == "__main__":
    main()
    # Everything is written and stopped. Tearing down ~400k objects of Feast, MLflow and Prefect at exit
    # took 2.5 s; frozen, the interpreter skips collecting them and exits at once.
    gc.freeze()
