"""Reports: the JSON names what drifted, the HTML shows it with embedded plots and loads nothing."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flows.monitoring.drift import DriftResult, DriftThresholds, detect_drift
from flows.monitoring.report import (
    history_entry,
    read_history,
    render_html,
    report_paths,
    summarize,
    write_report,
)
from flows.monitoring.triggers import AlertOutcome
from flows.monitoring.whylogs_backend import WhylogsBackend
from model_store.profiles import profile_frame

# Profiled as the processes that profile do: with whylogs' patches (model_store.libraries.whylogs).
pytestmark = pytest.mark.usefixtures("whylogs_patches")

BACKEND = WhylogsBackend()
MODEL = {"name": "fraud_scorer", "version": "3", "run_id": "abc", "threshold": 0.4}
END = datetime(2026, 3, 2, tzinfo=UTC)
WINDOW = (END - timedelta(hours=24), END)


class Page(HTMLParser):
    """Every tag with its attributes, and the text of the summary table's first column."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def frame(n: int, seed: int, inflation: float = 1.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "amount": rng.lognormal(3.5, 1.0, n) * inflation,
            "merchant_category": rng.choice(["grocery", "fuel", "travel"], n, p=[0.6, 0.3, 0.1]),
            "score": rng.beta(1, 40, n),
        }
    )


@pytest.fixture(scope="module")
def drifted() -> tuple[DriftResult, list]:
    reference, current = profile_frame(frame(5000, 1)), profile_frame(frame(1000, 2, inflation=2.5))
    result = detect_drift(BACKEND, reference, current, WINDOW, DriftThresholds())
    shown = [BACKEND.distribution(reference, current, c) for c in ["amount", "score"]]
    return result, shown


def publish(root: Path, result: DriftResult, distributions: list, now: datetime) -> dict:
    paths = report_paths(root, "fraud_scorer", now)
    alerts = [AlertOutcome("feature_drift", "1 feature(s) drifted: amount", webhook="not configured")]
    summary = summarize(result, None, alerts if result.drifted_features else [], MODEL, now, paths)
    history = [*read_history(paths.history), history_entry(paths, summary)]
    write_report(paths, summary, render_html(summary, distributions, history, None))
    return summary


def test_report_names_the_drifted_features_and_opens_offline(tmp_path: Path, drifted: tuple) -> None:
    result, distributions = drifted
    summary = publish(tmp_path, result, distributions, END + timedelta(minutes=5))

    written = json.loads(Path(summary["report"]["json"]).read_text())
    assert written["status"] == "drift" and written["drifted_features"] == ["amount"]
    assert written["columns"][0]["column"] == "amount" and written["columns"][0]["drifted"]
    assert written["model"]["version"] == "3" and written["window"]["hours"] == 24
    assert written["alerts"][0]["condition"] == "feature_drift"

    html = Path(summary["report"]["html"]).read_text()
    page = Page()
    page.feed(html)
    images = [attrs["src"] for tag, attrs in page.tags if tag == "img"]
    assert len(images) == 2 and all(src.startswith("data:image/png;base64,") for src in images)
    assert {attrs.get("alt") for tag, attrs in page.tags if tag == "img"} == {
        "distribution of amount",
        "distribution of score",
    }
    assert not [tag for tag, _ in page.tags if tag in {"script", "link", "iframe"}]
    assert not re.search(r"https?://", html), "the page must not load anything"
    text = " ".join(page.text)
    assert "1 of 2 features drifted (distribution: amount)." in text
    assert "merchant_category" in text and "DRIFT" in text


def test_history_grows_and_the_trend_appears(tmp_path: Path, drifted: tuple) -> None:
    result, distributions = drifted
    first = publish(tmp_path, result, distributions, END + timedelta(minutes=5))
    second = publish(tmp_path, result, distributions, END + timedelta(hours=1, minutes=5))
    history = read_history(tmp_path / "fraud_scorer" / "history.jsonl")
    assert [h["generated_at"] for h in history] == [first["generated_at"], second["generated_at"]]
    assert history[0]["drifted_features"] == ["amount"] and history[0]["alerts_fired"] == ["feature_drift"]
    assert (tmp_path / "fraud_scorer" / history[0]["html"]).exists()
    html = Path(second["report"]["html"]).read_text()
    assert 'alt="trend of past reports"' in html and f'href="../{history[0]["html"]}"' in html
    assert 'alt="trend of past reports"' not in Path(first["report"]["html"]).read_text()


def test_window_without_traffic_gives_a_clear_no_data_report(tmp_path: Path) -> None:
    reference = profile_frame(frame(2000, 3))
    result = detect_drift(BACKEND, reference, None, WINDOW, DriftThresholds())
    summary = publish(tmp_path, result, [], END + timedelta(minutes=5))
    written = json.loads(Path(summary["report"]["json"]).read_text())
    assert written["status"] == "no_data" and written["rows"]["current"] == 0 and written["columns"] == []
    assert written["message"].startswith("No data: no traffic was profiled between 2026-03-01 00:00")
    html = Path(summary["report"]["html"]).read_text()
    assert "NO DATA" in html and "No data: no traffic was profiled" in html


def test_same_second_reports_do_not_overwrite_each_other(tmp_path: Path) -> None:
    now = END + timedelta(minutes=5)
    first = report_paths(tmp_path, "fraud_scorer", now)
    first.directory.mkdir(parents=True)
    second = report_paths(tmp_path, "fraud_scorer", now)
    assert second.directory != first.directory and second.history == first.history


def test_headline_groups_drifted_features_by_reason() -> None:
    from flows.monitoring.report import headline

    reference = profile_frame(frame(4000, 4))
    current = frame(1000, 5, inflation=3.0)
    current.loc[:300, "merchant_category"] = None
    result = detect_drift(BACKEND, reference, profile_frame(current), WINDOW, DriftThresholds())
    assert headline(result, None) == (
        "2 of 2 features drifted (distribution: amount; missing values: merchant_category). "
        "The score distribution held."
    )
