"""The drift_report flow end to end against MLflow and the Prefect test API: report, record, alert once."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flows.deployments import TRAINING_PIPELINE
from flows.drift_report import DriftReportParams, drift_report
from flows.monitoring.performance import PerformanceThresholds
from model_store.profiles import ProfileStore, log_reference_profile, profile_frame
from model_store.registry import (
    PromotionDecision,
    PromotionPolicy,
    promote,
    record_decision,
    register_challenger,
)
from model_store.scorer import ModelContract
from model_store.settings import Settings, clear_settings, get_settings
from model_store.tracking import ensure_experiment, mlflow_client

# Profiled as the processes that profile do: with whylogs' patches (model_store.libraries.whylogs).
pytestmark = pytest.mark.usefixtures("whylogs_patches")

END = datetime(2026, 3, 10, tzinfo=UTC)
THRESHOLD = 0.1
LAG = timedelta(hours=PerformanceThresholds().label_lag_hours)


def write_validated(frame: pd.DataFrame, validated_dir: Path, batch: str) -> None:
    """Validated transactions in the documented layout: ``transactions/date=YYYY-MM-DD/<batch>.parquet``."""
    days = pd.to_datetime(frame["event_timestamp"], utc=True).dt.strftime("%Y-%m-%d")
    for day, rows in frame.groupby(days):
        folder = validated_dir / "transactions" / f"date={day}"
        folder.mkdir(parents=True, exist_ok=True)
        rows.to_parquet(folder / f"{batch}.parquet", index=False)


def features(n: int, seed: int, inflation: float = 1.0) -> pd.DataFrame:
    """Model inputs as the model receives them, with the true fraud probability as a perfect score."""
    rng = np.random.default_rng(seed)
    risk = rng.beta(0.4, 10, n)
    return pd.DataFrame(
        {
            "amount": rng.lognormal(3.5, 1.0, n) * inflation,
            "merchant_category": rng.choice(["grocery", "fuel", "travel"], n, p=[0.6, 0.3, 0.1]),
            "txn_count_24h": rng.poisson(3, n).astype("float64"),
            "score": risk,
        }
    )


def register_champion(settings: Settings) -> str:
    """A version registered as the training flow leaves it, and promoted."""
    version = register_version(settings)
    promote(version, "test champion", settings)
    return version


def register_version(settings: Settings) -> str:
    """A training run as the training flow leaves it: reference profile, holdout metrics, a registered model
    (the challenger)."""
    import mlflow
    from sklearn.dummy import DummyClassifier

    client = mlflow_client(settings)
    experiment = ensure_experiment(client, settings, f"{settings.model_name}-training")
    contract = ModelContract(
        decision_threshold=THRESHOLD,
        target_fpr=0.05,
        feature_service=settings.feature_service,
        features=["amount", "merchant_category", "txn_count_24h"],
        categorical_features=["merchant_category"],
    )
    reference = features(4000, seed=1)
    with mlflow.start_run(experiment_id=experiment) as run:
        log_reference_profile(profile_frame(reference))
        y = (np.random.default_rng(2).random(4000) < reference["score"]).astype(int)
        from sklearn.metrics import average_precision_score

        mlflow.log_metrics(
            {
                "model.pr_auc": float(average_precision_score(y, reference["score"])),
                "model.recall_at_threshold": float((reference["score"][y == 1] >= THRESHOLD).mean()),
            }
        )
        model = DummyClassifier(strategy="prior").fit(np.zeros((4, 1)), [0, 1, 0, 0])
        info = mlflow.sklearn.log_model(
            model, name="model", metadata=contract.model_dump(), pip_requirements=["scikit-learn"]
        )
    version = register_challenger(info.model_uri, contract, settings, run_id=run.info.run_id)
    return str(version.version)


def serve_traffic(settings: Settings, version: str, inflation: float) -> None:
    """Six hours of profiled traffic in the report window, and a labelled week of older predictions."""
    store = ProfileStore(settings.profile_store, settings.model_name)
    for hour in range(6):
        store.write_window(
            profile_frame(features(300, seed=10 + hour, inflation=inflation)), END - timedelta(hours=hour + 1)
        )
    perf_end = END - LAG
    old = features(3000, seed=20)
    times = pd.Series(
        pd.date_range(perf_end - timedelta(days=7), perf_end - timedelta(minutes=1), periods=3000)
    )
    ids = [f"tx-{i}" for i in range(3000)]
    predictions = pd.DataFrame(
        {
            "transaction_id": ids,
            "event_timestamp": times,
            "score": old["score"],
            "decision": old["score"] >= THRESHOLD,
            "model_version": version,
        }
    )
    for day, rows in predictions.groupby(times.dt.floor("D")):
        store.write_predictions(rows, day.to_pydatetime())
    labels = pd.DataFrame(
        {
            "transaction_id": ids,
            "event_timestamp": times,
            "is_fraud": (np.random.default_rng(21).random(3000) < old["score"]).astype("int64"),
            "label_timestamp": times + pd.Timedelta(days=8),
        }
    )
    write_validated(labels, settings.validated_dir, "labels")


@pytest.fixture(scope="module")
def champion_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, str], str]]:
    """A home with a registered champion, built once for this module (MLflow set-up is the slow part)."""
    from tests.conftest import make_settings

    with pytest.MonkeyPatch.context() as mp:
        settings = make_settings(tmp_path_factory.mktemp("monitoring") / "rtml", mp)
        version = register_champion(settings)
        env = {
            k: v
            for k, v in os.environ.items()
            if k.startswith("RTML_") or k in {"MLFLOW_TRACKING_URI", "BENTOML_HOME"}
        }
    clear_settings()
    yield env, version
    clear_settings()


@pytest.fixture
def champion(
    champion_env: tuple[dict[str, str], str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Settings, str]]:
    """Settings of the module's home (what ``get_settings()`` returns) and the champion's version."""
    env, version = champion_env
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    clear_settings()
    yield get_settings(), version
    clear_settings()


@pytest.fixture
def training_deployment(prefect_harness: None) -> object:
    """The deployment the trigger starts, registered in the test API (no worker: its runs stay scheduled)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        flow_name, deployment_name = TRAINING_PIPELINE.split("/")
        flow_id = client.create_flow_from_name(flow_name)
        deployment_id = client.create_deployment(flow_id=flow_id, name=deployment_name)

    def runs() -> list:
        with get_client(sync_client=True) as client:
            return client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
            )

    return runs


@pytest.mark.slow
def test_drifted_window_is_reported_recorded_and_retrains_once(
    champion: tuple[Settings, str], training_deployment: object
) -> None:
    import mlflow

    settings, version = champion
    serve_traffic(settings, version, inflation=2.5)
    runs_before = len(training_deployment())

    summary = drift_report(DriftReportParams(end=END + timedelta(minutes=20), window_hours=24))

    assert summary["status"] == "drift" and summary["drifted_features"] == ["amount"]
    assert summary["window"] == {
        "start": (END - timedelta(hours=24)).isoformat(),
        "end": END.isoformat(),
        "hours": 24,
    }
    assert summary["rows"] == {"current": 1800, "reference": 4000}
    written = json.loads(Path(summary["report"]["json"]).read_text())
    assert written["drifted_features"] == ["amount"] and written["model"]["version"] == version
    html = Path(summary["report"]["html"]).read_text()
    assert (
        "1 of 3 features drifted (distribution: amount)." in html and 'alt="distribution of amount"' in html
    )
    assert Path(summary["report"]["html"]).is_relative_to(settings.report_store / settings.model_name)

    performance = summary["performance"]
    assert performance["status"] == "ok" and performance["labelled"] == 3000
    assert performance["threshold"] == THRESHOLD and performance["holdout"]["pr_auc"] > 0

    alert = summary["alerts"][0]
    assert (
        alert["condition"] == "feature_drift" and not alert["suppressed"] and alert["training"] == "started"
    )
    runs = training_deployment()
    assert len(runs) == runs_before + 1 and alert["training_run_id"] in {str(r.id) for r in runs}

    client = mlflow_client(settings)
    run = client.get_run(summary["mlflow_run_id"])
    assert run.data.tags["rtml.model_version"] == version and run.data.metrics["drifted_features"] == 1
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "drift_report")}
    assert artifacts == {"drift_report/drift_report.html", "drift_report/drift_summary.json"}
    assert (
        client.get_model_version(settings.model_name, version).tags["monitoring.last_report_run"]
        == run.info.run_id
    )
    assert mlflow.get_experiment(run.info.experiment_id).name == f"{settings.model_name}-monitoring"

    again = drift_report(DriftReportParams(end=END + timedelta(minutes=40), window_hours=24))
    assert again["status"] == "drift" and again["alerts"][0]["suppressed"]
    assert len(training_deployment()) == runs_before + 1
    lines = (settings.report_store / settings.model_name / "history.jsonl").read_text().splitlines()
    history = [h for h in map(json.loads, lines) if h["window_end"] == END.isoformat()]
    assert [h["alerts_fired"] for h in history] == [["feature_drift"], []]


@pytest.mark.slow
def test_window_without_traffic_reports_no_data(
    champion: tuple[Settings, str], prefect_harness: None
) -> None:
    summary = drift_report(DriftReportParams(end=END + timedelta(days=30), window_hours=6))
    assert summary["status"] == "no_data" and summary["alerts"] == []
    assert summary["performance"]["status"] == "no_predictions"
    html = Path(summary["report"]["html"]).read_text()
    assert "No data: no traffic was profiled" in html


@pytest.mark.slow
def test_the_challenger_is_set_against_the_champion_and_promoted_on_live_evidence(
    settings: Settings, prefect_harness: None
) -> None:
    """The champion decided a labelled week; the challenger scored the same transactions in the shadow, better.

    Its holdout passed under a policy that asks for 48 hours and 1,000 labels of live evidence: the report's
    live gate promotes it.
    """
    from sklearn.metrics import average_precision_score

    champion = register_champion(settings)
    challenger = register_version(settings)
    policy = PromotionPolicy(min_shadow_hours=48, min_live_labels=1000, min_live_positives=20)
    held = PromotionDecision(False, ("holdout passed",), champion, shadowing=True)
    record_decision(challenger, held, settings, policy)

    store = ProfileStore(settings.profile_store, settings.model_name)
    n, start = 3000, END - timedelta(days=10)
    rng = np.random.default_rng(5)
    risk = rng.beta(0.4, 10, n)
    y = (rng.random(n) < risk).astype("int64")
    noisy = np.clip(risk + rng.normal(0, 0.08, n), 0, 1)
    times = pd.Series(pd.date_range(start, start + timedelta(days=7), periods=n))
    ids = [f"tx-{i}" for i in range(n)]

    def log(scores: np.ndarray, version: str, kind: str) -> None:
        frame = pd.DataFrame(
            {
                "transaction_id": ids,
                "event_timestamp": times,
                "score": scores,
                "decision": np.where(scores >= THRESHOLD, "decline", "approve"),
                "model_version": version,
            }
        )
        for hour, rows in frame.groupby(times.dt.floor("h")):
            store.write_predictions(rows, hour.to_pydatetime(), log=kind)

    log(noisy, champion, "predictions")
    log(risk, challenger, "shadow")
    labels = pd.DataFrame(
        {
            "transaction_id": ids,
            "event_timestamp": times,
            "is_fraud": y,
            "label_timestamp": times + pd.Timedelta(days=1),
        }
    )
    write_validated(labels, settings.validated_dir, "labels")

    summary = drift_report(DriftReportParams(end=END, window_hours=24))

    section = summary["challenger"]
    assert (
        section["pairs"] == n and section["labelled"] == n and section["shadow_hours"] == pytest.approx(168)
    )
    assert section["champion"]["pr_auc"] == pytest.approx(average_precision_score(y, noisy))
    assert section["challenger"]["pr_auc"] == pytest.approx(average_precision_score(y, risk))
    assert section["agreement"] == pytest.approx(((noisy >= THRESHOLD) == (risk >= THRESHOLD)).mean())
    assert section["review"]["decision"] == "promoted" and section["review"]["version"] == challenger
    assert f"Challenger v{challenger} promoted" in summary["message"]
    html = Path(summary["report"]["html"]).read_text()
    assert "Champion against challenger" in html and 'alt="champion and challenger scores"' in html
    aliases = mlflow_client(settings).get_registered_model(settings.model_name).aliases
    assert {alias: str(v) for alias, v in aliases.items()} == {"champion": challenger}


def test_naive_end_time_is_utc() -> None:
    assert DriftReportParams(end=datetime(2026, 3, 1, 5)).end == datetime(2026, 3, 1, 5, tzinfo=UTC)
