"""Alerts: a Prefect event, a webhook and one training run per condition, then quiet for the cool-down."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from flows.deployments import TRAINING_PIPELINE
from flows.monitoring.triggers import Alert, AlertLedger, TriggerSettings, dispatch_alerts

NOW = datetime(2026, 3, 2, 12, tzinfo=UTC)
LINKS = {"html": "/reports/r.html", "json": "/reports/r.json"}


class Receiver(BaseHTTPRequestHandler):
    """A real HTTP endpoint that keeps what it was sent and answers with the status it was told to."""

    received: list[dict]
    status = 200

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append(json.loads(body))  # type: ignore[attr-defined]
        self.send_response(self.server.status)  # type: ignore[attr-defined]
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[HTTPServer]:
    server = HTTPServer(("127.0.0.1", 0), Receiver)
    server.received, server.status = [], 200  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def drift_alert(version: str = "3") -> Alert:
    return Alert("feature_drift", "fraud_scorer", version, "2 feature(s) drifted: amount, channel", {"n": 2})


def test_ledger_remembers_and_survives_damage(tmp_path: Path) -> None:
    ledger = AlertLedger(tmp_path / "alerts.json")
    assert ledger.last_fired("m:feature_drift") is None
    ledger.record("m:feature_drift", NOW)
    assert AlertLedger(tmp_path / "alerts.json").last_fired("m:feature_drift") == NOW
    (tmp_path / "alerts.json").write_text("{not json")
    assert ledger.read() == {}


def test_alert_fires_once_then_is_debounced_until_the_cooldown_ends(
    prefect_harness: None, tmp_path: Path, webhook: HTTPServer
) -> None:
    ledger = AlertLedger(tmp_path / "alerts.json")
    config = TriggerSettings(webhook_url=f"http://127.0.0.1:{webhook.server_port}/hook", cooldown_hours=6)
    started: list[list[str]] = []

    def start(alerts: list[Alert]) -> str:
        started.append([a.condition for a in alerts])
        return f"run-{len(started)}"

    first = dispatch_alerts([drift_alert()], ledger, config, NOW, LINKS, start_training=start)
    assert not first[0].suppressed and first[0].event_id
    assert (first[0].webhook, first[0].training, first[0].training_run_id) == ("sent", "started", "run-1")
    assert webhook.received[0]["condition"] == "feature_drift"  # type: ignore[attr-defined]
    assert webhook.received[0]["report"] == LINKS  # type: ignore[attr-defined]
    assert "amount, channel" in webhook.received[0]["text"]  # type: ignore[attr-defined]

    again = dispatch_alerts(
        [drift_alert()], ledger, config, NOW + timedelta(hours=5), LINKS, start_training=start
    )
    assert again[0].suppressed and again[0].suppressed_until == (NOW + timedelta(hours=6)).isoformat()
    assert len(webhook.received) == 1 and started == [["feature_drift"]]  # type: ignore[attr-defined]

    later = dispatch_alerts(
        [drift_alert()], ledger, config, NOW + timedelta(hours=7), LINKS, start_training=start
    )
    assert not later[0].suppressed and later[0].training == "started"
    assert len(started) == 2


def test_a_second_condition_alerts_but_does_not_retrain_twice(prefect_harness: None, tmp_path: Path) -> None:
    ledger = AlertLedger(tmp_path / "alerts.json")
    started: list[str] = []
    config = TriggerSettings(cooldown_hours=24)
    dispatch_alerts(
        [drift_alert()], ledger, config, NOW, LINKS, start_training=lambda a: started.append("x") or "r1"
    )
    decay = Alert("performance_decay", "fraud_scorer", "3", "live PR-AUC fell")
    outcome = dispatch_alerts(
        [decay], ledger, config, NOW + timedelta(hours=1), LINKS, start_training=lambda a: "r2"
    )
    assert not outcome[0].suppressed and outcome[0].webhook == "not configured"
    assert outcome[0].training == "debounced" and started == ["x"]


def test_failures_are_reported_and_retraining_is_retried(
    prefect_harness: None, tmp_path: Path, webhook: HTTPServer
) -> None:
    webhook.status = 500  # type: ignore[attr-defined]
    ledger = AlertLedger(tmp_path / "alerts.json")
    config = TriggerSettings(
        webhook_url=f"http://127.0.0.1:{webhook.server_port}/secret-token", cooldown_hours=24
    )

    def broken(alerts: list[Alert]) -> str:
        raise RuntimeError(f"deployment {TRAINING_PIPELINE!r} not found")

    outcome = dispatch_alerts([drift_alert()], ledger, config, NOW, LINKS, start_training=broken)[0]
    assert outcome.webhook.startswith("failed: HTTP 500") and "secret-token" not in outcome.webhook
    assert outcome.training.startswith("failed") and "not found" in outcome.training
    retry = dispatch_alerts(
        [Alert("prediction_drift", "fraud_scorer", "3", "score drifted")],
        ledger,
        config,
        NOW + timedelta(hours=1),
        LINKS,
        start_training=lambda a: "r-ok",
    )[0]
    assert retry.training == "started" and retry.training_run_id == "r-ok"


def test_trigger_starts_the_training_deployment_once(prefect_harness: None, tmp_path: Path) -> None:
    """Against the Prefect API: one flow run of training_pipeline/training-pipeline, none for the repeat."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.events.filters import EventFilter, EventNameFilter

    with get_client(sync_client=True) as client:
        flow_name, deployment_name = TRAINING_PIPELINE.split("/")
        flow_id = client.create_flow_from_name(flow_name)
        deployment_id = client.create_deployment(flow_id=flow_id, name=deployment_name)
        only_ours = DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
        before = len(client.read_flow_runs(deployment_filter=only_ours))

        ledger = AlertLedger(tmp_path / "alerts.json")
        config = TriggerSettings(cooldown_hours=24)
        first = dispatch_alerts([drift_alert("7")], ledger, config, datetime.now(UTC), LINKS)[0]
        second = dispatch_alerts([drift_alert("7")], ledger, config, datetime.now(UTC), LINKS)[0]

        runs = client.read_flow_runs(deployment_filter=only_ours)
        assert len(runs) == before + 1
        assert first.training == "started" and first.training_run_id in {str(r.id) for r in runs}
        new_run = next(r for r in runs if str(r.id) == first.training_run_id)
        assert "feature_drift" in new_run.tags and "monitoring" in new_run.tags
        assert second.suppressed and second.training is None

        # The event reaches the API asynchronously: wait for it rather than for a fixed time.
        events = []
        deadline = time.monotonic() + 30
        while not events and time.monotonic() < deadline:
            page = client.read_events(
                filter=EventFilter(event=EventNameFilter(name=["rtml.monitoring.feature-drift"])), limit=50
            )
            events = [e for e in page.events if str(e.id) == first.event_id]
            time.sleep(0.5)
        assert events and events[0].resource.id == "rtml.model.fraud_scorer"
        assert events[0].payload["report"] == LINKS
