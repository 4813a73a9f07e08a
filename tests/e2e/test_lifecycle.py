"""The whole lifecycle, as `DEMO_SMALL=1 make demo` runs it, in a fresh home: each step's result is checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import redis

from deploy.local.servers import clean_env
from model_store.settings import REPO_ROOT
from tests.conftest import REDIS_URL, delete_project_keys, unique_project

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


@dataclass(frozen=True)
class DemoRun:
    home: Path
    summary: dict
    out: str
    err: str
    redis_keys: int


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoRun]:
    home = tmp_path_factory.mktemp("demo") / "rtml"
    project = unique_project("demo")
    env = clean_env(
        DEMO_SMALL="1",
        RTML_HOME=str(home),
        RTML_FEAST_PROJECT=project,
        RTML_REDIS_URL=REDIS_URL,
        PYTHONPATH=str(REPO_ROOT),
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="90",
        WHYLOGS_NO_ANALYTICS="1",
    )
    try:
        done = subprocess.run(
            [sys.executable, "-m", "deploy.local.demo"],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=1100,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 0, f"demo failed:\n{done.stdout[-5000:]}\n{done.stderr[-5000:]}"
        summary = json.loads((home / "demo_summary.json").read_text())
        client = redis.Redis.from_url(REDIS_URL)
        # Feast's hashes; our own keys (streams, window state, leases) start with "rtml:".
        keys = sum(1 for k in client.scan_iter(match=f"*{project}", count=1000) if not k.startswith(b"rtml:"))
        client.close()
        yield DemoRun(home, summary, done.stdout, done.stderr, keys)
    finally:
        delete_project_keys(project)


def test_step1_features_are_validated_and_materialized(demo: DemoRun) -> None:
    features = demo.summary["features"]
    assert features["transactions"] > 10_000
    assert features["customer_profile"] > 0 and features["merchant_profile"] > 0
    # One Feast hash per customer and per merchant of the demo's project (our stream and state keys aside), and
    # one each for step 7's probe card and merchant, whose velocity features only the stream processor wrote.
    probe_entities = 2 if demo.summary["rollout"]["probes"] else 0
    assert demo.redis_keys == features["customer_profile"] + features["merchant_profile"] + probe_entities
    assert any((demo.home / "data" / "offline" / "customer_activity").rglob("*.parquet"))


def test_step2_first_champion_is_trained_and_promoted(demo: DemoRun) -> None:
    first = demo.summary["first"]
    assert first["model_version"] == "1" and first["promoted"] is True
    assert 0.5 < first["model.roc_auc"] <= first["oracle.roc_auc"] + 0.02
    assert first["model.pr_auc"] > first["baseline.pr_auc"] * 0.9


def test_step3_and_4_the_built_service_scored_the_stream(demo: DemoRun) -> None:
    assert demo.summary["bento"].startswith("fraud_scorer:")
    assert (demo.home / "bentoml" / "bentos" / "fraud_scorer").is_dir()
    traffic = demo.summary["traffic"]
    assert traffic["requests"] > 1_000 and traffic["p50_ms"] > 0
    # The decisions' log; the shadow log beside it holds the scores of the model that did not decide.
    logs = (demo.home / "profiles").glob("*/predictions/*/*.parquet")
    predictions = pd.concat(pd.read_parquet(p) for p in logs)
    # Every decision (the drifted period's and step 7's probes) reached the prediction log exactly once, through
    # the stream and the traffic log.
    probes = demo.summary["rollout"]["probes"]
    assert predictions["transaction_id"].is_unique and len(predictions) == traffic["requests"] + probes
    # And the raw zone, through the landing writer: the feature pipeline ingested them with their labels.
    landed = pd.concat(
        pd.read_parquet(p) for p in (demo.home / "data" / "raw" / "transactions").glob("stream-*.parquet")
    )
    assert set(landed["transaction_id"]) == set(predictions["transaction_id"])
    assert any((demo.home / "data" / "validated" / "labels").rglob("*.parquet"))


def test_step4_features_were_fresh_per_transaction(demo: DemoRun) -> None:
    """Served decisions equal the same model's on point-in-time-fresh features: the window processor kept each
    customer's and merchant's velocity current (only the daily merchant-risk snapshot may lag)."""
    traffic = demo.summary["traffic"]
    compared = traffic["served_vs_fresh"]
    assert compared["decisions_agree"] >= 0.995, compared
    assert (
        abs(compared["served"]["pr_auc"] - compared["fresh"]["pr_auc"])
        <= 0.02 * compared["fresh"]["pr_auc"] + 0.01
    )
    assert traffic["waves"] > 1 and 0 < traffic["freshness_p99_ms"] < 2_000
    burst = traffic["burst"]
    assert len(burst) >= 3 and all(row["txn_count_1h"] is not None for row in burst)
    counts = [row["txn_count_1h"] for row in burst if row["is_fraud"]]
    assert counts == sorted(counts) and counts[-1] > counts[0], (
        "a burst's velocity rises transaction by transaction"
    )


def test_step5_drift_is_detected_and_reported(demo: DemoRun) -> None:
    drift = demo.summary["drift"]
    assert drift["status"] == "drift"
    html = Path(drift["report"]["html"])
    assert html.is_file() and html.is_relative_to(demo.home)
    text = html.read_text()
    assert "channel" in text and "<script src=" not in text


def test_step6_the_alert_retrained_and_the_gate_decided(demo: DemoRun) -> None:
    states = [run["state"] for run in demo.summary["retraining"]]
    assert states.count("Completed") == 1, states
    versions = {line.split("\t")[0]: line.split("\t") for line in demo.summary["registry"]}
    assert set(versions) == {"v1", "v2"}
    # The gate's verdict and its reason are recorded on the new version, promoted or not.
    _, _, verdict, reason = versions["v2"]
    assert verdict in {"promoted", "rejected"} and reason


def test_step7_the_service_followed_the_registry_without_a_restart(demo: DemoRun) -> None:
    rollout = demo.summary["rollout"]
    verdicts = {line.split("\t")[0]: line.split("\t")[2] for line in demo.summary["registry"]}
    gates_champion = "2" if verdicts["v2"] == "promoted" else "1"
    # The gate's promotion, or a drill (promote the challenger, roll back): each move reached traffic.
    assert rollout["moves"] and all(move["seconds"] is not None for move in rollout["moves"])
    assert rollout["moves"][-1]["to"] == gates_champion == rollout["last_version"]
    assert rollout["failed"] == 0 and all(move["errors"] == 0 for move in rollout["moves"])
    assert "failed requests meanwhile" in demo.out


def test_step8_summary_tells_where_to_look(demo: DemoRun) -> None:
    assert "MLflow UI" in demo.out and "Prefect UI" in demo.out and str(demo.home / "reports") in demo.out
    assert "Stopped the service and the Prefect server" in demo.out
    # Nothing the demo started is left running.
    leftovers = subprocess.run(["pgrep", "-f", str(demo.home)], capture_output=True, text=True).stdout.split()
    assert [pid for pid in leftovers if int(pid) != os.getpid()] == []


def test_the_terminal_shows_the_steps_and_the_log_file_the_rest(demo: DemoRun) -> None:
    steps = [line.split("]")[0] + "]" for line in demo.out.splitlines() if line.startswith("[")]
    assert steps == [f"[{n}/8]" for n in range(1, 9)]
    terminal = demo.out + demo.err
    assert "Finished in state" not in terminal and "Warning" not in terminal and "Traceback" not in terminal
    log_path = demo.home / "demo.log"
    assert f"full log: {log_path}" in demo.out
    log = log_path.read_text()
    # Prefect's run lines, our modules' loggers and library warnings, from every step.
    assert "prefect.task_runs [" in log and "Finished in state Completed()" in log
    assert "flows.feature_store.validation: Batch batch_0001_history" in log
    assert "WARNING flows.monitoring.triggers" in log
