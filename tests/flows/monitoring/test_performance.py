"""Live performance: labels that have arrived joined with logged predictions, compared with the holdout."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score

from flows.feature_store.labels import write_validated_labels
from flows.monitoring.performance import (
    PerformanceThresholds,
    join_labels,
    load_labels,
    measure_performance,
)
from model_store.settings import Settings

START = datetime(2026, 2, 1, tzinfo=UTC)
AS_OF = START + timedelta(days=30)
WINDOW = (START, START + timedelta(days=7))


def write_validated(frame: pd.DataFrame, validated_dir: Path, batch: str) -> None:
    """Validated transactions in the documented layout: ``transactions/date=YYYY-MM-DD/<batch>.parquet``."""
    days = pd.to_datetime(frame["event_timestamp"], utc=True).dt.strftime("%Y-%m-%d")
    for day, rows in frame.groupby(days):
        folder = validated_dir / "transactions" / f"date={day}"
        folder.mkdir(parents=True, exist_ok=True)
        rows.to_parquet(folder / f"{batch}.parquet", index=False)


def transactions(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Validated transactions with labels, and the true fraud probability a good model would score."""
    rng = np.random.default_rng(seed)
    risk = rng.beta(0.3, 12, n)
    events = pd.Series(
        pd.to_datetime(START) + pd.to_timedelta(rng.uniform(0, 7 * 86400, n), unit="s")
    ).sort_values()
    frame = pd.DataFrame(
        {
            "transaction_id": [f"t{seed}-{i}" for i in range(n)],
            "event_timestamp": events.to_numpy(),
            "is_fraud": (rng.random(n) < risk).astype("int64"),
        }
    )
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    frame["label_timestamp"] = frame["event_timestamp"] + pd.Timedelta(days=7)
    return frame, risk


def predictions(frame: pd.DataFrame, scores: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "transaction_id": frame["transaction_id"],
            "event_timestamp": frame["event_timestamp"],
            "score": scores,
            "decision": scores >= 0.2,
            "model_version": "4",
        }
    )


def holdout_of(y: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    return {
        "pr_auc": float(average_precision_score(y, scores)),
        "recall": float((scores[y == 1] >= threshold).mean()),
    }


def test_labels_count_only_once_they_have_arrived(settings: Settings) -> None:
    frame, _ = transactions(1000, seed=1)
    late = frame.index % 4 == 0
    frame.loc[late, "label_timestamp"] = AS_OF + pd.Timedelta(days=1)
    frame.loc[frame.index % 10 == 1, ["is_fraud", "label_timestamp"]] = None
    write_validated(frame.astype({"is_fraud": "Int64"}), settings.validated_dir, "batch-1")

    labels = load_labels(settings.validated_dir, START, as_of=AS_OF)
    expected = frame[~late & frame["is_fraud"].notna()]
    assert sorted(labels["transaction_id"]) == sorted(expected["transaction_id"])
    assert labels["is_fraud"].dtype == "int64"
    assert load_labels(settings.validated_dir, START + timedelta(days=40), as_of=AS_OF).empty


def test_labels_arriving_on_their_own_after_their_transactions_count_once_arrived(settings: Settings) -> None:
    frame, _ = transactions(400, seed=4)
    unlabelled = frame.assign(
        is_fraud=pd.array([None] * len(frame), dtype="Int64"),
        label_timestamp=pd.Series(pd.NaT, index=frame.index, dtype="datetime64[us, UTC]"),
    )
    write_validated(unlabelled, settings.validated_dir, "b")
    feed = frame[["transaction_id", "is_fraud", "label_timestamp"]].copy()
    feed.loc[feed.index % 4 == 0, "label_timestamp"] = AS_OF + pd.Timedelta(days=2)
    write_validated_labels(feed, settings.validated_dir, "chargebacks")

    labels = load_labels(settings.validated_dir, START, as_of=AS_OF)

    arrived = feed[feed.index % 4 != 0]
    assert sorted(labels["transaction_id"]) == sorted(arrived["transaction_id"])
    assert (
        labels.set_index("transaction_id")["is_fraud"].to_dict()
        == arrived.set_index("transaction_id")["is_fraud"].to_dict()
    )
    later = load_labels(settings.validated_dir, START, as_of=AS_OF + pd.Timedelta(days=3))
    assert len(later) == len(frame)


def test_good_scores_hold_and_bad_scores_decay(settings: Settings) -> None:
    frame, risk = transactions(6000, seed=2)
    write_validated(frame, settings.validated_dir, "batch-2")
    labels = load_labels(settings.validated_dir, START, as_of=AS_OF)
    holdout_frame, holdout_risk = transactions(6000, seed=3)
    holdout = holdout_of(holdout_frame["is_fraud"].to_numpy(), holdout_risk, 0.2)
    thresholds = PerformanceThresholds()

    good = measure_performance(
        join_labels(predictions(frame, risk), labels), 0.2, holdout, WINDOW, AS_OF, "4", thresholds
    )
    assert good.status == "ok" and good.reasons == []
    assert good.labelled == 6000 and good.label_coverage == 1.0
    assert good.pr_auc == pytest.approx(holdout["pr_auc"], abs=0.08)
    assert good.pr_auc_interval[0] < good.pr_auc < good.pr_auc_interval[1]
    assert good.expected_calibration_error < 0.02  # the risk is the true probability
    assert len(good.calibration) == 10 and sum(b.count for b in good.calibration) == 6000
    assert len(good.daily) == 7

    noisy = np.clip(risk * np.random.default_rng(0).lognormal(0, 2.0, len(risk)), 0, 1)
    bad = measure_performance(
        join_labels(predictions(frame, noisy), labels), 0.2, holdout, WINDOW, AS_OF, "4", thresholds
    )
    assert bad.status == "decay" and bad.decayed
    assert any("PR-AUC" in r for r in bad.reasons)
    assert bad.pr_auc_interval[1] < holdout["pr_auc"]


def test_duplicate_predictions_count_once(settings: Settings) -> None:
    frame, risk = transactions(300, seed=4)
    logged = predictions(frame, risk)
    twice = pd.concat(
        [logged, logged.assign(event_timestamp=logged["event_timestamp"] + pd.Timedelta(seconds=1))]
    )
    labels = frame[["transaction_id", "is_fraud"]]
    assert len(join_labels(twice, labels)) == 300


def test_too_few_labels_and_no_predictions_give_no_verdict() -> None:
    frame, risk = transactions(200, seed=5)
    labels = frame[["transaction_id", "is_fraud"]]
    few = measure_performance(
        join_labels(predictions(frame, risk), labels),
        0.2,
        {"pr_auc": 0.9},
        WINDOW,
        AS_OF,
        "4",
        PerformanceThresholds(),
    )
    assert few.status == "insufficient_labels" and "a verdict needs 500" in few.reasons[0]
    assert few.pr_auc is not None  # measured, shown, not judged
    empty = measure_performance(
        join_labels(predictions(frame, risk).iloc[:0], labels),
        0.2,
        {},
        WINDOW,
        AS_OF,
        "4",
        PerformanceThresholds(),
    )
    assert (empty.status, empty.predictions, empty.pr_auc) == ("no_predictions", 0, None)


def test_weighted_ranking_matches_scikit_learn() -> None:
    from flows.monitoring.performance import WeightedRanking

    rng = np.random.default_rng(9)
    y = (rng.random(3000) < 0.05).astype(int)
    scores = np.round(rng.random(3000) * 0.5 + y * rng.random(3000) * 0.5, 2)  # many ties
    weights = np.bincount(rng.integers(0, 3000, 3000), minlength=3000).astype(float)
    ranking = WeightedRanking(y, scores)
    assert ranking.average_precision() == pytest.approx(average_precision_score(y, scores), rel=1e-12)
    assert ranking.average_precision(weights) == pytest.approx(
        average_precision_score(y, scores, sample_weight=weights), rel=1e-12
    )
