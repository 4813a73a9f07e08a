"""Champion against challenger: decisions and shadow scores paired by transaction, figures on the same rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score

from flows.monitoring.challenger import compare_models, pair_scores

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def logged(ids: list[str], scores: list[float], version: str, threshold: float = 0.5) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "transaction_id": ids,
            "event_timestamp": [T0 + timedelta(hours=i) for i in range(len(ids))],
            "score": scores,
            "decision": ["decline" if s >= threshold else "approve" for s in scores],
            "model_version": version,
        }
    )


def test_pairs_follow_the_versions_whichever_decided() -> None:
    # t1, t2: the champion (v3) decided, the challenger (v4) shadowed; t3: a canary decision by v4, shadowed
    # by v3; t4: shadowed by an earlier challenger (v2) only; t5: decided, its shadow score never arrived.
    decisions = pd.concat(
        [
            logged(["t1", "t2"], [0.1, 0.9], "3"),
            logged(["t3"], [0.7], "4"),
            logged(["t4", "t5"], [0.2, 0.3], "3"),
        ]
    )
    shadow = pd.concat(
        [logged(["t1", "t2"], [0.6, 0.8], "4"), logged(["t3"], [0.2], "3"), logged(["t4"], [0.9], "2")]
    )
    # A redelivered shadow score, logged again later, counts once.
    again = logged(["t1"], [0.6], "4").assign(event_timestamp=T0 + timedelta(days=1))
    paired = pair_scores(decisions, pd.concat([shadow, again]), champion="3", challenger="4")
    assert paired.set_index("transaction_id")[["champion_score", "challenger_score"]].to_dict("index") == {
        "t1": {"champion_score": 0.1, "challenger_score": 0.6},
        "t2": {"champion_score": 0.9, "challenger_score": 0.8},
        "t3": {"champion_score": 0.2, "challenger_score": 0.7},
    }


def test_no_shadow_scores_give_no_pairs() -> None:
    decisions = logged(["t1"], [0.1], "3")
    paired = pair_scores(decisions, decisions.iloc[0:0], champion="3", challenger="4")
    assert paired.empty and "challenger_score" in paired.columns


def test_figures_are_both_models_on_the_same_labelled_rows() -> None:
    rng = np.random.default_rng(0)
    n = 2000
    ids = [f"t{i}" for i in range(n)]
    risk = rng.beta(0.5, 8, n)
    y = (rng.random(n) < risk).astype(int)
    champion = np.clip(risk + rng.normal(0, 0.15, n), 0, 1)  # a noisier view of the same risk
    paired = pair_scores(
        logged(ids, champion.tolist(), "3", threshold=0.3),
        logged(ids, risk.tolist(), "4", threshold=0.2),
        champion="3",
        challenger="4",
    )
    # Labels of the first 1,500 have arrived; one label names a transaction neither model scored.
    labels = pd.DataFrame({"transaction_id": [*ids[:1500], "elsewhere"], "is_fraud": [*y[:1500], 1]})
    comparison = compare_models(
        paired, labels, ("3", 0.3), ("4", 0.2), (T0, T0 + timedelta(days=90)), T0 + timedelta(days=91)
    )

    assert (
        comparison.pairs == n and comparison.labelled == 1500 and comparison.positives == int(y[:1500].sum())
    )
    assert comparison.champion.pr_auc == pytest.approx(average_precision_score(y[:1500], champion[:1500]))
    assert comparison.challenger.pr_auc == pytest.approx(average_precision_score(y[:1500], risk[:1500]))
    assert comparison.challenger.pr_auc > comparison.champion.pr_auc
    flagged = risk[:1500] >= 0.2
    assert comparison.challenger.recall == pytest.approx(flagged[y[:1500] == 1].mean())
    assert comparison.challenger.precision == pytest.approx(y[:1500][flagged].mean())
    declines = (champion >= 0.3, risk >= 0.2)
    assert comparison.agreement == pytest.approx((declines[0] == declines[1]).mean())
    assert comparison.champion_only_declines == int((declines[0] & ~declines[1]).sum())
    assert comparison.challenger_only_declines == int((declines[1] & ~declines[0]).sum())
    assert comparison.champion.decline_rate == pytest.approx(declines[0].mean())
    assert sum(comparison.champion_histogram) == sum(comparison.challenger_histogram) == n
    assert comparison.shadow_hours == n - 1


def test_without_labels_of_both_classes_there_is_no_live_ranking() -> None:
    ids = ["t1", "t2", "t3"]
    paired = pair_scores(logged(ids, [0.1, 0.2, 0.9], "3"), logged(ids, [0.2, 0.1, 0.8], "4"), "3", "4")
    labels = pd.DataFrame({"transaction_id": ids, "is_fraud": [0, 0, 0]})
    comparison = compare_models(paired, labels, ("3", 0.5), ("4", 0.5), (T0, T0), T0)
    assert comparison.labelled == 3 and comparison.champion.pr_auc is None and comparison.agreement == 1.0
