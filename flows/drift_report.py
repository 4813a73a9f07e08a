"""Prefect flow ``drift_report``: the champion's reference profile against a window of serving traffic.

Merges the window's hourly whylogs profiles, judges drift per feature and for the score, measures live
performance on older predictions whose labels have arrived, sets the challenger's shadow scores against the
champion's (and applies the live half of the promotion gate to a challenger waiting for it), writes the HTML and
JSON report with its history, records it in MLflow, and raises alerts (Prefect event, webhook, training run)
with a cool-down.
Run locally: ``python -m flows.drift_report [--window-hours 24] [--end 2026-03-01T00:00Z]``.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow, get_run_logger, task
from pydantic import BaseModel, Field, field_validator

from flows.monitoring.challenger import ChallengerComparison, compare_models, pair_scores
from flows.monitoring.drift import Distribution, DriftResult, DriftThresholds, detect_drift
from flows.monitoring.monitored_model import (
    MonitoredModel,
    find_challenger,
    find_champion,
    load_reference,
    log_report,
)
from flows.monitoring.performance import (
    PerformanceResult,
    PerformanceThresholds,
    join_labels,
    load_labels,
    measure_performance,
)
from flows.monitoring.report import (
    history_entry,
    read_history,
    render_html,
    report_paths,
    summarize,
    write_report,
)
from flows.monitoring.triggers import AlertLedger, TriggerSettings, collect_alerts, dispatch_alerts
from flows.monitoring.whylogs_backend import WhylogsBackend
from flows.settings import get_flow_settings
from model_store import libraries, registry
from model_store.profiles import SCORE_COLUMN, ProfileStore, window_bounds
from model_store.settings import get_settings

LEDGER_NAME = "alerts.json"


class DriftReportParams(BaseModel):
    """What to compare and when to alert."""

    window_hours: int = Field(24, gt=0, description="Whole hours of traffic before `end` that are compared.")
    end: datetime | None = Field(
        None, description="End of the window (UTC, rounded down to the hour); now if empty."
    )
    drift: DriftThresholds = Field(default_factory=DriftThresholds)
    performance: PerformanceThresholds = Field(default_factory=PerformanceThresholds)
    shadow_window_hours: int = Field(
        504,
        gt=0,
        description="Hours of traffic before `end` in which the challenger's shadow scores are set against the "
        "champion's: long enough for labels to arrive (see performance.label_lag_hours).",
    )
    triggers: TriggerSettings = Field(default_factory=TriggerSettings)
    monitoring_experiment: str | None = Field(
        None, description="MLflow experiment; `<model_name>-monitoring`."
    )

    @field_validator("end")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        """A time without a zone is UTC, like every timestamp of the platform."""
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


@task
def find_model() -> MonitoredModel:
    return find_champion(get_settings())


@task
def judge_drift(
    model: MonitoredModel, window: tuple[datetime, datetime], thresholds: DriftThresholds
) -> tuple[DriftResult, list[Distribution]]:
    """Drift of the window against the champion's reference, and the distributions worth drawing."""
    settings = get_settings()
    backend = WhylogsBackend()
    reference = load_reference(model)
    current = ProfileStore(settings.profile_store, settings.model_name).read_window(*window)
    result = detect_drift(backend, reference, current, window, thresholds)
    shown = [v.column for v in result.verdicts if v.drifted or v.column == SCORE_COLUMN]
    distributions = [
        d for c in shown if current is not None and (d := backend.distribution(reference, current, c))
    ]
    return result, distributions


@task
def judge_performance(
    model: MonitoredModel, end: datetime, thresholds: PerformanceThresholds
) -> PerformanceResult:
    """Live figures of the champion's predictions that are old enough for their labels to have arrived."""
    settings = get_settings()
    window_end = end - timedelta(hours=thresholds.label_lag_hours)
    window = (window_end - timedelta(hours=thresholds.window_hours), window_end)
    predictions = ProfileStore(settings.profile_store, settings.model_name).read_predictions(*window)
    predictions = predictions[predictions["model_version"].astype(str) == model.version]
    labels = load_labels(settings.validated_dir, window[0] - timedelta(days=1), as_of=end)
    joined = join_labels(predictions, labels)
    return measure_performance(joined, model.threshold, model.holdout, window, end, model.version, thresholds)


@task
def find_shadowed() -> MonitoredModel | None:
    return find_challenger(get_settings())


@task
def compare_challenger(
    champion: MonitoredModel, challenger: MonitoredModel, end: datetime, hours: int
) -> ChallengerComparison:
    """Both models' scores of the same transactions (decision and shadow logs), with the labels known by ``end``."""
    settings = get_settings()
    window = window_bounds(end, hours)
    store = ProfileStore(settings.profile_store, settings.model_name)
    paired = pair_scores(
        store.read_predictions(*window),
        store.read_predictions(*window, log="shadow"),
        champion.version,
        challenger.version,
    )
    labels = load_labels(settings.validated_dir, window[0] - timedelta(days=1), as_of=end)
    return compare_models(
        paired,
        labels,
        (champion.version, champion.threshold),
        (challenger.version, challenger.threshold),
        window,
        end,
    )


@task
def review_challenger(
    champion: MonitoredModel, challenger: MonitoredModel, comparison: ChallengerComparison
) -> dict[str, Any] | None:
    """The live half of the promotion gate, for a challenger whose holdout passed and whose policy asks for it."""
    if (
        challenger.tags.get(registry.DECISION_TAG) != "shadowing"
        or registry.POLICY_TAG not in challenger.tags
    ):
        return None
    policy = registry.PromotionPolicy.model_validate_json(challenger.tags[registry.POLICY_TAG])
    decision = registry.decide_after_shadow(
        comparison.shadow_hours,
        comparison.labelled,
        comparison.positives,
        (comparison.champion.pr_auc, comparison.challenger.pr_auc),
        policy,
        champion.version,
    )
    registry.record_decision(challenger.version, decision, get_settings(), policy)
    return {"version": challenger.version, "decision": decision.verdict, "reasons": list(decision.reasons)}


@task
def publish_report(
    model: MonitoredModel,
    drift: DriftResult,
    distributions: list[Distribution],
    performance: PerformanceResult,
    challenger: tuple[ChallengerComparison, dict[str, Any] | None] | None,
    triggers: TriggerSettings,
    experiment: str | None,
) -> dict[str, Any]:
    """Raise the alerts, write the report and its history, and record it in MLflow."""
    settings = get_settings()
    now = datetime.now(UTC)
    paths = report_paths(settings.report_store, model.name, now)
    ledger = AlertLedger(settings.report_store / model.name / LEDGER_NAME)
    # A webhook configured for the platform (RTML_ALERT_WEBHOOK_URL) serves every run.
    if triggers.webhook_url is None and (url := get_flow_settings().alert_webhook_url):
        triggers = triggers.model_copy(update={"webhook_url": url})
    alerts = collect_alerts(drift, performance, model.name, model.version)
    outcomes = dispatch_alerts(alerts, ledger, triggers, now, paths.links())
    summary = summarize(drift, performance, outcomes, model.as_dict(), now, paths, challenger)
    history = [*read_history(paths.history), history_entry(paths, summary)]
    html = render_html(summary, distributions, history, performance, challenger[0] if challenger else None)
    write_report(paths, summary, html)
    summary["mlflow_run_id"] = log_report(settings, model, paths, summary, experiment)
    return summary


@flow(name="drift_report")
def drift_report(params: DriftReportParams | None = None) -> dict[str, Any]:
    """Compare the champion's reference with the last window of traffic; report, record and alert."""
    libraries.whylogs.apply_patches()
    params = params or DriftReportParams()
    logger = get_run_logger()
    window = window_bounds(params.end or datetime.now(UTC), params.window_hours)
    model = find_model()
    drift, distributions = judge_drift(model, window, params.drift)
    performance = judge_performance(model, window[1], params.performance)
    challenger = None
    if (shadowed := find_shadowed()) is not None and shadowed.version != model.version:
        comparison = compare_challenger(model, shadowed, window[1], params.shadow_window_hours)
        challenger = (comparison, review_challenger(model, shadowed, comparison))
    summary = publish_report(
        model, drift, distributions, performance, challenger, params.triggers, params.monitoring_experiment
    )
    logger.info("%s: %s (report %s)", summary["status"], summary["message"], summary["report"]["html"])
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.drift_report", description=__doc__.splitlines()[0])
    parser.add_argument("--window-hours", type=int, default=24)
    parser.add_argument("--end", type=datetime.fromisoformat, default=None, help="ISO time, UTC if no offset")
    args = parser.parse_args(argv)
    summary = drift_report(DriftReportParams(window_hours=args.window_hours, end=args.end))
    print(f"{summary['status']}: {summary['message']}\n{summary['report']['html']}")


if __name__ == "__main__":
    main()
