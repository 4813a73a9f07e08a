"""The scorer's Prometheus metrics, served on BentoML's ``/metrics`` next to BentoML's own request metrics.

Names are a contract (docs/architecture.md, the Grafana dashboard): ``online_feature_read_seconds``,
``online_features_missing_total``, ``fraud_score``, ``model_version_info``, ``model_swaps_total`` and
``model_registry_up``. They are created on first use,
after BentoML has pointed ``prometheus_client`` at its multiprocess directory, and once per process, since
Prometheus refuses a second registration of the same name.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from model_store import libraries

# The lower buckets cover a healthy Redis read; the upper ones catch a struggling store or a large batch.
READ_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
# From this many scores on, a batch updates the score histogram bucket by bucket (see observe_scores).
BULK_OBSERVE_ROWS = 16
SCORE_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


@dataclass(frozen=True)
class ScorerMetrics:
    """Handles on the service's metrics; their methods are cheap enough for the request path."""

    feature_read_seconds: Any
    features_missing: Any
    score: Any
    model_version: Any
    model_swaps: Any
    registry_up: Any

    def observe_missing(self, missing: Iterable[list[str]]) -> None:
        """Count null features by name across the rows of a request."""
        counts = Counter(name for row in missing for name in row)
        for name, count in counts.items():
            self.features_missing.labels(feature=name).inc(count)

    def observe_scores(self, scores: Sequence[float]) -> None:
        """``Histogram.observe`` for each score, with one write per bucket for a batch.

        prometheus_client has no bulk observe, and in BentoML's multiprocess mode each observation is two writes
        to a memory-mapped file, which add up over a batch: a batch goes through
        ``model_store.libraries.prometheus_client.observe_many``.
        """
        histogram = self.score
        if len(scores) < BULK_OBSERVE_ROWS:
            for value in scores:
                histogram.observe(value)
            return
        libraries.prometheus_client.observe_many(histogram, scores)

    def set_model(self, name: str, version: str, previous: str | None = None) -> None:
        """Publish the served version as ``model_version_info{model_name, model_version} 1`` (the one it
        replaced, if any, goes to 0)."""
        if previous is not None and previous != version:
            self.model_version.labels(model_name=name, model_version=previous).set(0)
        self.model_version.labels(model_name=name, model_version=version).set(1)


@cache
def scorer_metrics() -> ScorerMetrics:
    """The process's metrics, registered on first call."""
    from prometheus_client import Counter as PromCounter
    from prometheus_client import Gauge, Histogram

    return ScorerMetrics(
        feature_read_seconds=Histogram(
            "online_feature_read_seconds",
            "Time to read a request's online features (all entities, one round trip).",
            buckets=READ_BUCKETS,
        ),
        features_missing=PromCounter(
            "online_features_missing",
            "Model features that came back null from the online store (defaults were used).",
            labelnames=["feature"],
        ),
        score=Histogram(
            "fraud_score", "Fraud probability of each scored transaction.", buckets=SCORE_BUCKETS
        ),
        # livemax: one series per version across workers, gone with the process that served it.
        model_version=Gauge(
            "model_version_info",
            "The model version being served (value 1).",
            labelnames=["model_name", "model_version"],
            multiprocess_mode="livemax",
        ),
        model_swaps=PromCounter(
            "model_swaps",
            "Registry versions a worker loaded, took back from the ones it kept loaded (retained), or refused (outcome).",
            labelnames=["outcome"],
        ),
        registry_up=Gauge(
            "model_registry_up",
            "1 while the worker reaches the model registry (0: it serves what it has).",
            multiprocess_mode="livemin",
        ),
    )
