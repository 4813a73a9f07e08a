"""Drift statistics and verdicts on small seeded data: drifted windows flagged, clean ones not."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from flows.monitoring.drift import DriftThresholds, adjust_p_values, detect_drift
from flows.monitoring.whylogs_backend import WhylogsBackend, categorical_test
from model_store import libraries
from model_store.profiles import profile_frame

# Profiled as the processes that profile do: with whylogs' patches (model_store.libraries.whylogs).
pytestmark = pytest.mark.usefixtures("whylogs_patches")

WINDOW = (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC))
BACKEND = WhylogsBackend()


def traffic(n: int, seed: int, inflation: float = 1.0, online_shift: float = 0.0) -> pd.DataFrame:
    """Model-like inputs: a skewed amount, counts, a channel mix, a region with a rare value, and a score."""
    rng = np.random.default_rng(seed)
    channel_p = np.array([0.5, 0.3, 0.2]) + np.array([-online_shift, 0.0, online_shift])
    return pd.DataFrame(
        {
            "amount": rng.lognormal(3.5, 1.0, n) * inflation,
            "txn_count_24h": rng.poisson(3, n),
            "channel": rng.choice(["chip", "contactless", "online"], n, p=channel_p),
            "home_region": rng.choice(["north", "south", "east", "abroad"], n, p=[0.4, 0.35, 0.245, 0.005]),
            "score": rng.beta(1, 40, n),
        }
    )


@pytest.fixture(scope="module")
def reference() -> object:
    return profile_frame(traffic(8000, seed=1))


def test_clean_windows_are_not_flagged(reference: object) -> None:
    results = [
        detect_drift(BACKEND, reference, profile_frame(traffic(1500, seed=s)), WINDOW, DriftThresholds())
        for s in range(10, 20)
    ]
    assert [r.status for r in results] == ["no_drift"] * 10
    assert all(r.current_rows == 1500 and r.reference_rows == 8000 for r in results)


def test_drifted_window_names_the_drifted_features(reference: object) -> None:
    drifted = profile_frame(traffic(1500, seed=30, inflation=2.0, online_shift=0.2))
    result = detect_drift(BACKEND, reference, drifted, WINDOW, DriftThresholds())
    assert result.status == "drift"
    assert sorted(result.drifted_features) == ["amount", "channel"]
    assert not result.prediction_drift
    amount = result.verdict("amount")
    assert amount.stats.test == "ks" and amount.stats.statistic > 0.2 and amount.adjusted_p_value < 1e-6
    assert amount.reasons == ["distribution"]
    channel = result.verdict("channel")
    assert channel.stats.test == "chi-square" and channel.stats.shift == pytest.approx(0.2, abs=0.04)
    assert 0 < channel.stats.distance < channel.stats.shift  # Hellinger, reported beside the shift


def test_score_drift_is_prediction_drift(reference: object) -> None:
    frame = traffic(1500, seed=31)
    frame["score"] = np.random.default_rng(0).beta(2, 20, len(frame))
    result = detect_drift(BACKEND, reference, profile_frame(frame), WINDOW, DriftThresholds())
    assert result.prediction_drift and result.drifted_features == []


def test_missing_values_types_and_absent_columns_are_flagged(reference: object) -> None:
    frame = traffic(1500, seed=32)
    frame.loc[: len(frame) // 5, "txn_count_24h"] = np.nan  # 20 % missing, was 0 %
    frame["channel"] = np.where(np.arange(len(frame)) % 10 == 0, 7, frame["channel"]).astype(object)
    frame = frame.drop(columns=["home_region"]).assign(extra=1.0)
    result = detect_drift(BACKEND, reference, profile_frame(frame), WINDOW, DriftThresholds())
    assert "missing values" in result.verdict("txn_count_24h").reasons
    assert result.verdict("txn_count_24h").stats.current_missing == pytest.approx(0.2, abs=0.01)
    assert "type" in result.verdict("channel").reasons
    assert result.verdict("home_region").reasons == ["column absent"]
    extra = result.verdict("extra")
    assert extra.reasons == ["new column"] and not extra.drifted
    assert set(result.drifted_features) == {"txn_count_24h", "channel", "home_region"}


def test_no_traffic_and_too_little_traffic_give_no_verdict(reference: object) -> None:
    empty = detect_drift(BACKEND, reference, None, WINDOW, DriftThresholds())
    assert (empty.status, empty.current_rows, empty.verdicts) == ("no_data", 0, [])
    small = detect_drift(
        BACKEND, reference, profile_frame(traffic(50, seed=3, inflation=3.0)), WINDOW, DriftThresholds()
    )
    assert small.status == "insufficient_data"
    assert small.verdicts and not any(v.drifted for v in small.verdicts)
    assert small.verdict("amount").stats.p_value < 0.05  # measured, shown, but not judged


def test_correction_keeps_many_clean_columns_from_alarming() -> None:
    """Twenty clean columns at p < 0.05 flag about one per window uncorrected; Holm keeps windows quiet."""
    rng = np.random.default_rng(5)
    columns = {f"x{i}": rng.normal(0, 1, 6000) for i in range(20)}
    reference = profile_frame(pd.DataFrame(columns))
    thresholds = DriftThresholds(min_ks_statistic=0.0)  # the correction alone, no floor on the shift
    raw_alarms = corrected_alarms = 0
    for seed in range(15):
        window_rng = np.random.default_rng(100 + seed)
        current = profile_frame(pd.DataFrame({f"x{i}": window_rng.normal(0, 1, 800) for i in range(20)}))
        result = detect_drift(BACKEND, reference, current, WINDOW, thresholds)
        raw_alarms += any(v.stats.p_value < thresholds.alpha for v in result.verdicts)
        corrected_alarms += result.status == "drift"
    assert raw_alarms >= 5
    assert corrected_alarms <= 1


def test_adjusted_p_values_match_the_textbook() -> None:
    p = [0.01, 0.04, 0.03, 0.005]
    assert adjust_p_values(p, "holm") == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert adjust_p_values(p, "bonferroni") == pytest.approx([0.04, 0.16, 0.12, 0.02])
    assert adjust_p_values(p, "bh") == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert adjust_p_values([], "holm") == []


def test_two_sample_chi_squared_tolerates_rare_categories_and_catches_new_ones() -> None:
    """whylogs' own chi-squared returns p=0 whenever a reference category expects < 1 row in the window."""
    rng = np.random.default_rng(7)
    values = ["a", "b", "c", "rare"]
    reference = profile_frame(pd.DataFrame({"c": rng.choice(values, 20000, p=[0.5, 0.3, 0.198, 0.002])}))
    chi_square = libraries.whylogs.drift_algorithms().ChiSquare()
    ours, theirs = [], []
    for _ in range(30):
        clean = profile_frame(pd.DataFrame({"c": rng.choice(values, 300, p=[0.5, 0.3, 0.198, 0.002])}))
        ours.append(categorical_test(reference.get_column("c"), clean.get_column("c"))["p_value"])
        theirs.append(chi_square.calculate(clean.get_column("c"), reference.get_column("c")).pvalue)
    assert theirs == [0.0] * 30  # the defect this backend avoids
    assert sum(p < 0.05 for p in ours) <= 4  # about 5 % expected
    novel = profile_frame(
        pd.DataFrame({"c": rng.choice(["a", "b", "c", "new"], 300, p=[0.4, 0.3, 0.1, 0.2])})
    )
    result = categorical_test(reference.get_column("c"), novel.get_column("c"))
    assert result["p_value"] < 1e-10 and result["shift"] == pytest.approx(0.2, abs=0.05)


def test_distributions_share_bins_for_plots(reference: object) -> None:
    current = profile_frame(traffic(1000, seed=40, inflation=2.0))
    amount = BACKEND.distribution(reference, current, "amount")
    assert amount.kind == "numeric" and amount.log_scale
    assert len(amount.edges) == len(amount.reference) + 1 == len(amount.current) + 1
    assert sum(amount.reference) == pytest.approx(1.0) and sum(amount.current) == pytest.approx(1.0)
    assert np.average(amount.edges[1:], weights=amount.current) > np.average(
        amount.edges[1:], weights=amount.reference
    )
    channel = BACKEND.distribution(reference, current, "channel")
    assert channel.kind == "categorical" and set(channel.labels) == {"chip", "contactless", "online"}
    assert BACKEND.distribution(reference, current, "not_a_column") is None
    assert WINDOW[1] - WINDOW[0] == timedelta(days=1)
