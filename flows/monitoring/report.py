"""Drift reports: a JSON summary for machines, a self-contained HTML page for people, and their history.

Layout under ``<report_store>/<model_name>/``: ``<YYYYMMDDTHHMMSSZ>/drift_report.html`` and
``drift_summary.json`` per run, and ``history.jsonl`` (one line per report) for trends. The HTML embeds its
plots as PNG data and its styles inline, and loads nothing: it opens the same offline, from a mail attachment
or from the MLflow UI (whylogs' own visualizer pulls d3 and Bootstrap from CDNs and renders blank offline).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from flows.monitoring.challenger import ChallengerComparison
from flows.monitoring.drift import Distribution, DriftResult
from flows.monitoring.performance import PerformanceResult
from flows.monitoring.triggers import AlertOutcome
from model_store.atomic_files import write_atomically
from model_store.profiles import SCORE_COLUMN

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
HTML_NAME = "drift_report.html"
JSON_NAME = "drift_summary.json"
HISTORY_NAME = "history.jsonl"
HISTORY_SHOWN = 30
TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
REFERENCE_COLOUR, CURRENT_COLOUR = "#8c959f", "#cf222e"


@dataclass(frozen=True)
class ReportPaths:
    """Where one report's files go."""

    directory: Path
    html: Path
    json: Path
    history: Path

    def links(self) -> dict[str, str]:
        return {"html": str(self.html), "json": str(self.json)}


def report_paths(report_store: Path, model_name: str, generated_at: datetime) -> ReportPaths:
    """The files of a report generated at ``generated_at`` (known before it is written, for alert links)."""
    base = Path(report_store) / model_name
    directory = base / generated_at.strftime("%Y%m%dT%H%M%SZ")
    suffix = 1
    while directory.exists():  # two runs in the same second keep both reports
        suffix += 1
        directory = base / f"{generated_at.strftime('%Y%m%dT%H%M%SZ')}-{suffix}"
    return ReportPaths(directory, directory / HTML_NAME, directory / JSON_NAME, base / HISTORY_NAME)


def summarize(
    drift: DriftResult,
    performance: PerformanceResult | None,
    alerts: Sequence[AlertOutcome],
    model: dict[str, Any],
    generated_at: datetime,
    paths: ReportPaths,
    challenger: tuple[ChallengerComparison, dict[str, Any] | None] | None = None,
) -> dict[str, Any]:
    """The JSON summary: status, every column's statistics and verdict, performance, the challenger against the
    champion (with the live gate's review, when it ran), alerts, file paths."""
    columns = sorted(
        (v.to_dict() for v in drift.verdicts),
        key=lambda c: (not c["drifted"], _sort_p(c["adjusted_p_value"] or c["p_value"]), c["column"]),
    )
    hours = round((drift.window_end - drift.window_start).total_seconds() / 3600)
    return {
        "schema_version": SCHEMA_VERSION,
        "generated_at": generated_at.isoformat(),
        "model": model,
        "window": {
            "start": drift.window_start.isoformat(),
            "end": drift.window_end.isoformat(),
            "hours": hours,
        },
        "status": drift.status,
        "message": headline(drift, performance, challenger[1] if challenger else None),
        "rows": {"current": drift.current_rows, "reference": drift.reference_rows},
        "drifted_features": drift.drifted_features,
        "prediction_drift": drift.prediction_drift,
        "backend": drift.backend,
        "thresholds": drift.thresholds.model_dump(),
        "columns": columns,
        "performance": _json_safe(performance.to_dict()) if performance is not None else None,
        "challenger": (
            _json_safe({**challenger[0].to_dict(), "review": challenger[1]})
            if challenger is not None
            else None
        ),
        "alerts": [a.to_dict() for a in alerts],
        "report": {"html": str(paths.html), "json": str(paths.json)},
    }


def headline(
    drift: DriftResult, performance: PerformanceResult | None, review: dict[str, Any] | None = None
) -> str:
    """One sentence a person reads first."""
    window = f"{drift.window_start:%Y-%m-%d %H:%M} to {drift.window_end:%Y-%m-%d %H:%M} UTC"
    if drift.status == "no_data":
        text = f"No data: no traffic was profiled between {window}; nothing to compare."
    elif drift.status == "insufficient_data":
        text = (
            f"Too little data: {drift.current_rows} rows between {window}, fewer than the "
            f"{drift.thresholds.min_rows} a verdict needs; statistics are shown without verdicts."
        )
    else:
        n_features = sum(1 for v in drift.verdicts if v.column != SCORE_COLUMN)
        if drift.drifted_features:
            # Grouped by why, strongest evidence first: shifted distributions read differently from new nulls.
            by_reason: dict[str, list[str]] = {}
            for v in drift.verdicts:
                if v.drifted and v.column != SCORE_COLUMN:
                    by_reason.setdefault(v.reasons[0], []).append(v.column)
            groups = "; ".join(f"{reason}: {', '.join(sorted(names))}" for reason, names in by_reason.items())
            text = f"{len(drift.drifted_features)} of {n_features} features drifted ({groups})."
        else:
            text = f"No feature drifted among {n_features}."
        text += (
            " The score distribution drifted." if drift.prediction_drift else " The score distribution held."
        )
    if performance is not None and performance.decayed:
        text += " Live performance decayed: " + "; ".join(performance.reasons) + "."
    if review is not None and review["decision"] != "shadowing":
        text += (
            f" Challenger v{review['version']} {review['decision']}: " + "; ".join(review["reasons"]) + "."
        )
    return text


def render_html(
    summary: dict[str, Any],
    distributions: Sequence[Distribution],
    history: Sequence[dict[str, Any]],
    performance: PerformanceResult | None,
    comparison: ChallengerComparison | None = None,
) -> str:
    """The self-contained page: summary table, embedded plots, performance, challenger, alerts and trend."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(loader=FileSystemLoader(TEMPLATE_DIR), autoescape=select_autoescape(["html", "j2"]))
    template = env.get_template("drift_report.html.j2")
    return template.render(
        s=summary,
        plots=[{"column": d.column, "png": distribution_png(d)} for d in distributions],
        calibration_png=calibration_png(performance) if performance and performance.calibration else None,
        trend_png=trend_png(history) if len(history) >= 2 else None,
        challenger_png=challenger_png(comparison) if comparison is not None and comparison.pairs else None,
        history=list(reversed(history[-HISTORY_SHOWN:])),
        fmt=_fmt,
        fmt_p=_fmt_p,
        pct=_pct,
        interval=_interval,
    )


def write_report(paths: ReportPaths, summary: dict[str, Any], html: str) -> None:
    """Write the HTML and JSON, then add the report to the history (last, so history never names a missing file)."""
    paths.directory.mkdir(parents=True, exist_ok=True)
    write_atomically(paths.html, html)
    write_atomically(paths.json, json.dumps(summary, indent=2, allow_nan=False))
    append_history(paths, summary)


def history_entry(paths: ReportPaths, summary: dict[str, Any]) -> dict[str, Any]:
    """The line of ``history.jsonl`` for one report: what a trend needs, and where the report is."""
    score = next((c for c in summary["columns"] if c["column"] == SCORE_COLUMN), None)
    performance = summary.get("performance") or {}
    base = paths.history.parent
    return {
        "generated_at": summary["generated_at"],
        "window_start": summary["window"]["start"],
        "window_end": summary["window"]["end"],
        "model_version": summary["model"].get("version"),
        "status": summary["status"],
        "current_rows": summary["rows"]["current"],
        "drifted_features": summary["drifted_features"],
        "prediction_drift": summary["prediction_drift"],
        "score_ks": score["statistic"] if score else None,
        "performance_status": performance.get("status"),
        "pr_auc": performance.get("pr_auc"),
        "recall": performance.get("recall"),
        "alerts_fired": [a["condition"] for a in summary["alerts"] if not a["suppressed"]],
        "html": str(paths.html.relative_to(base)),
        "json": str(paths.json.relative_to(base)),
    }


def append_history(paths: ReportPaths, summary: dict[str, Any]) -> None:
    paths.history.parent.mkdir(parents=True, exist_ok=True)
    with paths.history.open("a") as handle:
        handle.write(json.dumps(history_entry(paths, summary), allow_nan=False) + "\n")


def read_history(history: Path, limit: int = 200) -> list[dict[str, Any]]:
    """The last ``limit`` entries of ``history.jsonl``, oldest first; a damaged line is skipped."""
    if not Path(history).exists():
        return []
    entries = []
    for number, line in enumerate(Path(history).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            logger.warning("skipping damaged line %d of %s", number, history)
    return entries[-limit:]


def distribution_png(dist: Distribution) -> str:
    """Reference against current shares of one column, as base64 PNG."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2, 2.8), dpi=90, layout="constrained")
    ax = fig.add_subplot()
    x = list(range(len(dist.labels)))
    if dist.kind == "categorical":
        width = 0.4
        ax.bar([i - width / 2 for i in x], dist.reference, width, label="reference", color=REFERENCE_COLOUR)
        ax.bar([i + width / 2 for i in x], dist.current, width, label="this window", color=CURRENT_COLOUR)
        ax.set_xticks(x, dist.labels, rotation=35, ha="right", fontsize=7)
    else:
        edges = dist.edges or list(range(len(dist.labels) + 1))
        ax.stairs(dist.reference, edges, fill=True, alpha=0.45, label="reference", color=REFERENCE_COLOUR)
        ax.stairs(dist.current, edges, linewidth=1.8, label="this window", color=CURRENT_COLOUR)
        if dist.log_scale:
            ax.set_xscale("log")
        ax.tick_params(labelsize=7)
        ax.set_xlabel("end bins hold the tails beyond the 1st and 99th percentiles", fontsize=6)
    ax.set_title(dist.column, fontsize=9)
    ax.set_ylabel("share of rows", fontsize=7)
    ax.legend(fontsize=7, frameon=False)
    return _png(fig)


def calibration_png(performance: PerformanceResult) -> str:
    """Mean score against observed fraud rate per score bin (the diagonal is perfect calibration)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.6, 3.2), dpi=90, layout="constrained")
    ax = fig.add_subplot()
    xs = [b.mean_score for b in performance.calibration]
    ys = [b.fraud_rate for b in performance.calibration]
    top = max([*xs, *ys, 1e-3]) * 1.1
    ax.plot([0, top], [0, top], color=REFERENCE_COLOUR, linestyle="--", linewidth=1)
    ax.plot(xs, ys, marker="o", color=CURRENT_COLOUR)
    ax.set_xlabel("mean score", fontsize=7)
    ax.set_ylabel("observed fraud rate", fontsize=7)
    ax.set_title("calibration (score deciles)", fontsize=9)
    ax.tick_params(labelsize=7)
    return _png(fig)


def challenger_png(comparison: ChallengerComparison) -> str:
    """Both models' score distributions on the same transactions, with each one's threshold."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2, 2.8), dpi=90, layout="constrained")
    ax = fig.add_subplot()
    for figures, counts, colour, fill in (
        (comparison.champion, comparison.champion_histogram, REFERENCE_COLOUR, True),
        (comparison.challenger, comparison.challenger_histogram, CURRENT_COLOUR, False),
    ):
        shares = [c / max(comparison.pairs, 1) for c in counts]
        label = f"v{figures.version}" + (" (champion)" if figures is comparison.champion else " (challenger)")
        if fill:
            ax.stairs(shares, comparison.bin_edges, fill=True, alpha=0.45, label=label, color=colour)
        else:
            ax.stairs(shares, comparison.bin_edges, linewidth=1.8, label=label, color=colour)
        if figures.threshold is not None:
            ax.axvline(figures.threshold, color=colour, linestyle="--", linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("score (dashed: each model's threshold)", fontsize=7)
    ax.set_ylabel("share of transactions", fontsize=7)
    ax.set_title("scores of the same transactions", fontsize=9)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, frameon=False)
    return _png(fig)


def trend_png(history: Sequence[dict[str, Any]]) -> str:
    """Drifted features, score KS and live PR-AUC over past reports."""
    from matplotlib.figure import Figure

    points = history[-HISTORY_SHOWN * 4 :]
    times = [datetime.fromisoformat(h["window_end"]) for h in points]
    fig = Figure(figsize=(9, 3.0), dpi=90, layout="constrained")
    left, middle, right = fig.subplots(1, 3)
    left.plot(times, [len(h.get("drifted_features") or []) for h in points], marker="o", color=CURRENT_COLOUR)
    left.set_title("drifted features", fontsize=9)
    middle.plot(times, [_nan(h.get("score_ks")) for h in points], marker="o", color=CURRENT_COLOUR)
    middle.set_title("score KS distance", fontsize=9)
    right.plot(times, [_nan(h.get("pr_auc")) for h in points], marker="o", color=CURRENT_COLOUR)
    right.set_title("live PR-AUC", fontsize=9)
    for ax in (left, middle, right):
        ax.tick_params(labelsize=7)
        ax.tick_params(axis="x", rotation=30)
    return _png(fig)


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _json_safe(value: Any) -> Any:
    """Nested dicts and lists with NaN and inf as None (JSON has neither)."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _sort_p(p: float | None) -> float:
    return 2.0 if p is None else p


def _nan(value: float | None) -> float:
    return float("nan") if value is None else value


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _fmt_p(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.1e}" if value < 1e-3 else f"{value:.3f}"


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.1%}"


def _interval(value: Sequence[float] | None) -> str:
    return "" if not value else f"{value[0]:.3f} to {value[1]:.3f}"
