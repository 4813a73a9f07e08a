"""What monitoring does when drift or decay passes its thresholds: an event, retraining, a webhook alert.

Each condition (feature drift, prediction drift, performance decay) alerts at most once per cool-down; the
retraining run is started at most once per cool-down whichever condition asks for it. The memory of past
alerts is a small JSON file next to the reports (the report store is shared by every run of the flow): an
alert is remembered once its event is emitted, a retraining run only once it has started, so a failed start is
tried again by the next run. The new model still has to pass the promotion gate: the training flow decides,
not this module.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr

from flows.deployments import TRAINING_PIPELINE
from flows.monitoring.drift import DriftResult
from flows.monitoring.performance import PerformanceResult
from model_store.atomic_files import write_atomically
from model_store.profiles import SCORE_COLUMN

logger = logging.getLogger(__name__)

Condition = Literal["feature_drift", "prediction_drift", "performance_decay"]
EVENT_PREFIX = "rtml.monitoring"
RETRAINING_KEY = "retraining"


class TriggerSettings(BaseModel):
    """Where alerts go and how often they may repeat."""

    webhook_url: SecretStr | None = Field(
        None,
        description="POSTed a JSON alert when set (a secret: chat webhooks carry their token); logged otherwise.",
    )
    cooldown_hours: float = Field(24.0, ge=0, description="Quiet time after an alert for the same condition.")
    start_training: bool = Field(True, description="Start the training deployment when a condition fires.")
    training_deployment: str = Field(TRAINING_PIPELINE, description="Deployment run as flow/deployment.")
    webhook_timeout_seconds: float = Field(10.0, gt=0)


@dataclass(frozen=True)
class Alert:
    """One condition that passed its thresholds in one report."""

    condition: Condition
    model_name: str
    model_version: str | None
    summary: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.model_name}:{self.condition}"

    @property
    def event_name(self) -> str:
        return f"{EVENT_PREFIX}.{self.condition.replace('_', '-')}"


@dataclass
class AlertOutcome:
    """What happened to one alert: suppressed, or which actions ran and how they ended."""

    condition: Condition
    summary: str
    suppressed: bool = False
    suppressed_until: str | None = None
    event_id: str | None = None
    webhook: str | None = None  # "sent", "not configured" or the error
    training_run_id: str | None = None
    training: str | None = None  # "started", "debounced", "disabled" or the error

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class AlertLedger:
    """When each alert key last fired, in a JSON file: the debounce memory."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def read(self) -> dict[str, str]:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            # A damaged ledger must not stop alerts: start afresh, and say so.
            logger.warning(
                "alert ledger %s is unreadable (%s): treating every condition as new", self.path, error
            )
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def last_fired(self, key: str) -> datetime | None:
        value = self.read().get(key)
        return datetime.fromisoformat(value) if value else None

    def quiet_until(self, key: str, cooldown: timedelta) -> datetime | None:
        """The end of ``key``'s cool-down, or None when it may fire now."""
        last = self.last_fired(key)
        return last + cooldown if last is not None else None

    def record(self, key: str, moment: datetime) -> None:
        data = self.read()
        data[key] = moment.astimezone(UTC).isoformat()
        write_atomically(self.path, json.dumps(data, indent=2, sort_keys=True))


def collect_alerts(
    drift: DriftResult, performance: PerformanceResult | None, model_name: str, model_version: str | None
) -> list[Alert]:
    """The conditions this report passes: drifted features, a drifted score, decayed performance."""
    alerts = []
    common = {"model_name": model_name, "model_version": model_version}
    if drift.drifted_features:
        reasons = {v.column: v.reasons for v in drift.verdicts if v.column in drift.drifted_features}
        alerts.append(
            Alert(
                condition="feature_drift",
                summary=f"{len(reasons)} feature(s) drifted: {', '.join(reasons)}",
                details={"features": reasons, "window_end": drift.window_end.isoformat()},
                **common,
            )
        )
    if drift.prediction_drift:
        score = drift.verdict(SCORE_COLUMN)
        alerts.append(
            Alert(
                condition="prediction_drift",
                summary=f"score distribution drifted (KS {score.stats.statistic:.3f})"
                if score and score.stats.statistic is not None
                else "score distribution drifted",
                details={
                    "reasons": score.reasons if score else [],
                    "window_end": drift.window_end.isoformat(),
                },
                **common,
            )
        )
    if performance is not None and performance.decayed:
        alerts.append(
            Alert(
                condition="performance_decay",
                summary="; ".join(performance.reasons),
                details={
                    "pr_auc": performance.pr_auc,
                    "recall": performance.recall,
                    "holdout": performance.holdout,
                },
                **common,
            )
        )
    return alerts


def is_quiet(ledger: AlertLedger, key: str, now: datetime, cooldown: timedelta) -> datetime | None:
    """The end of the cool-down when ``key`` fired less than ``cooldown`` before ``now``; None otherwise."""
    until = ledger.quiet_until(key, cooldown)
    return until if until is not None and now < until else None


def dispatch_alerts(
    alerts: list[Alert],
    ledger: AlertLedger,
    config: TriggerSettings,
    now: datetime,
    report_links: dict[str, str],
    start_training: Callable[[list[Alert]], str] | None = None,
) -> list[AlertOutcome]:
    """Emit, alert and retrain for every condition not in its cool-down; returns what happened to each."""
    cooldown = timedelta(hours=config.cooldown_hours)
    outcomes: list[AlertOutcome] = []
    fired: list[Alert] = []
    for alert in alerts:
        outcome = AlertOutcome(condition=alert.condition, summary=alert.summary)
        until = is_quiet(ledger, alert.key, now, cooldown)
        if until is not None:
            outcome.suppressed, outcome.suppressed_until = True, until.isoformat()
            logger.info("%s suppressed until %s (cool-down %s h)", alert.key, until, config.cooldown_hours)
            outcomes.append(outcome)
            continue
        outcome.event_id = emit_alert_event(alert, report_links)
        outcome.webhook = post_webhook(alert, config, report_links)
        ledger.record(alert.key, now)
        outcomes.append(outcome)
        fired.append(alert)
    if fired:
        start_retraining(
            fired, [o for o in outcomes if not o.suppressed], ledger, config, now, start_training
        )
    return outcomes


def start_retraining(
    fired: list[Alert],
    outcomes: list[AlertOutcome],
    ledger: AlertLedger,
    config: TriggerSettings,
    now: datetime,
    start_training: Callable[[list[Alert]], str] | None,
) -> None:
    """Start one training run for all conditions that fired, unless one was started within the cool-down."""
    key = f"{fired[0].model_name}:{RETRAINING_KEY}"
    if not config.start_training:
        status, run_id = "disabled", None
    elif is_quiet(ledger, key, now, timedelta(hours=config.cooldown_hours)) is not None:
        status, run_id = "debounced", None
    else:
        try:
            run_id = (start_training or run_training_deployment(config))(fired)
            status = "started"
            ledger.record(key, now)
        except Exception as error:  # the report must still be written; the next run retries
            logger.error("could not start %s: %s", config.training_deployment, error)
            status, run_id = f"failed: {error}", None
    for outcome in outcomes:
        outcome.training, outcome.training_run_id = status, run_id


def run_training_deployment(config: TriggerSettings) -> Callable[[list[Alert]], str]:
    """A starter that asks Prefect to run the training deployment now, without waiting for it."""

    def start(alerts: list[Alert]) -> str:
        from prefect.deployments import run_deployment

        reasons = ", ".join(a.condition for a in alerts)
        flow_run = run_deployment(
            name=config.training_deployment,
            timeout=0,
            tags=["monitoring", *(a.condition for a in alerts)],
            flow_run_name=f"retrain-on-{reasons.replace(', ', '-')}",
        )
        logger.info("started %s: flow run %s (%s)", config.training_deployment, flow_run.id, reasons)
        return str(flow_run.id)

    return start


def emit_alert_event(alert: Alert, report_links: dict[str, str]) -> str | None:
    """A Prefect event automations can react to, on the model as the resource."""
    from prefect.events import emit_event

    event = emit_event(
        event=alert.event_name,
        resource={
            "prefect.resource.id": f"rtml.model.{alert.model_name}",
            "prefect.resource.name": alert.model_name,
            "rtml.model.version": str(alert.model_version or ""),
        },
        payload={"summary": alert.summary, "details": alert.details, "report": report_links},
    )
    logger.warning("%s: %s", alert.event_name, alert.summary)
    return str(event.id) if event is not None else None


def post_webhook(alert: Alert, config: TriggerSettings, report_links: dict[str, str]) -> str:
    """POST the alert as JSON (with a ``text`` line chat tools show); failures are reported, not raised."""
    if not config.webhook_url:
        logger.warning("no webhook configured; alert: %s", alert.summary)
        return "not configured"
    import httpx

    body = {
        "text": f"[{alert.model_name} v{alert.model_version}] {alert.summary}",
        "condition": alert.condition,
        "model_name": alert.model_name,
        "model_version": alert.model_version,
        "details": alert.details,
        "report": report_links,
    }
    url = config.webhook_url.get_secret_value()
    host = httpx.URL(url).host  # never log the full URL: its path is often the token
    try:
        response = httpx.post(url, json=body, timeout=config.webhook_timeout_seconds)
        response.raise_for_status()
    except httpx.HTTPStatusError as error:
        logger.error("webhook at %s answered %s", host, error.response.status_code)
        return f"failed: HTTP {error.response.status_code} from {host}"
    except httpx.HTTPError as error:
        logger.error("webhook at %s failed: %s", host, type(error).__name__)
        return f"failed: {type(error).__name__} reaching {host}"
    return "sent"
