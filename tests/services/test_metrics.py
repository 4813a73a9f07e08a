"""The scorer's metrics: a batch's scores land in the histogram exactly as one observation each would."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from services.scorer.metrics import BULK_OBSERVE_ROWS, SCORE_BUCKETS, ScorerMetrics


def score_metrics() -> tuple[ScorerMetrics, CollectorRegistry]:
    registry = CollectorRegistry()
    histogram = Histogram("fraud_score", "scores", buckets=SCORE_BUCKETS, registry=registry)
    return ScorerMetrics(None, None, histogram, None, None, None), registry


def test_a_batch_of_scores_fills_the_histogram_as_single_observations_do() -> None:
    rng = np.random.default_rng(3)
    # Values on bucket bounds, at 0 and 1, and a spread between them.
    scores = [0.0, 0.01, 0.0100001, 0.5, 0.99, 1.0, *rng.beta(0.3, 3, 500).tolist()]
    assert len(scores) >= BULK_OBSERVE_ROWS
    bulk, bulk_registry = score_metrics()
    single, single_registry = score_metrics()

    bulk.observe_scores(scores)
    for value in scores:
        single.score.observe(value)

    def samples(registry: CollectorRegistry) -> dict[str, float]:
        lines = generate_latest(registry).decode().splitlines()
        return {
            name: float(value)
            for name, _, value in (line.rpartition(" ") for line in lines)
            if not name.startswith("#") and "_created" not in name
        }

    got, expected = samples(bulk_registry), samples(single_registry)
    # The sum differs in the last bits only: the same numbers added in another order.
    assert got.pop("fraud_score_sum") == pytest.approx(expected.pop("fraud_score_sum"), rel=1e-12)
    assert got == expected
    assert got["fraud_score_count"] == len(scores)
