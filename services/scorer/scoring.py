"""Scoring a list of requests: online features, the model, the answer, metrics and the traffic log.

Generic over the domain: ``services/scorer/transaction.py`` turns requests into Feast rows; everything here
works from the feature service and the model contract.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from services.scorer import transaction
from services.scorer.traffic_log import ScoredBatch

if TYPE_CHECKING:
    from services.scorer.metrics import ScorerMetrics
    from services.scorer.model import ServingModel
    from services.scorer.online_features import FeatureReader
    from services.scorer.traffic_log import TrafficLog

logger = logging.getLogger(__name__)


class ScoreResult(BaseModel):
    """The answer for one transaction: its fraud probability, the decision and what the features lacked."""

    transaction_id: str
    fraud_probability: float = Field(ge=0, le=1)
    decision: str = Field(description="'decline' when fraud_probability >= threshold, else 'approve'.")
    threshold: float = Field(description="The model version's stored decision threshold.")
    model_name: str
    model_version: str
    missing_features: list[str] = Field(
        description="Model features the online store had no value for; the model's defaults were used "
        "(NaN for numbers, '__missing__' for categories)."
    )
    stale_features: list[str] = Field(description="Model features older than their feature view's TTL.")
    unknown_entities: list[str] = Field(
        description="Entities (customer, merchant) the online store has never seen."
    )


class ScoreBatchResult(BaseModel):
    """The answer for a batch: one result per transaction, in the order they were sent."""

    results: list[ScoreResult]


class FeaturesMismatch(RuntimeError):
    """The model reads features its feature service does not provide."""


class OnlineScoring:
    """Scores requests end to end; the service's endpoints are thin wrappers around ``score``."""

    def __init__(
        self,
        reader: FeatureReader,
        model: ServingModel,
        metrics: ScorerMetrics,
        traffic_log: TrafficLog | None,
    ) -> None:
        absent = [name for name in model.features if name not in reader.plan.output_names]
        if absent:
            raise FeaturesMismatch(
                f"model {model.name} v{model.version} reads {absent}, which feature service "
                f"{reader.plan.feature_service!r} does not provide; re-apply the feature repository or rebuild "
                "the service with a matching model"
            )
        self.reader = reader
        self.model = model
        self.metrics = metrics
        self.traffic_log = traffic_log
        self._model_features = frozenset(model.features)

    async def score(self, requests: Sequence[transaction.Transaction]) -> list[dict[str, Any]]:
        """One answer per request, in order. Raises ``OnlineStoreUnavailable`` when the store is down."""
        rows = transaction.feature_rows(requests)
        times = transaction.event_times(requests)
        ids = transaction.request_ids(requests)
        started = time.perf_counter()
        features = await self.reader.read(rows, times)
        self.metrics.feature_read_seconds.observe(time.perf_counter() - started)
        scores = self.model.predict(features.columns)
        decisions = self.model.decide(scores)
        probabilities = scores.tolist()
        model_features = self._model_features
        missing = [[f for f in row if f in model_features] for row in features.missing]
        stale = [[f for f in row if f in model_features] for row in features.stale]
        self.metrics.observe_scores(probabilities)
        if any(missing):
            self.metrics.observe_missing(missing)
        if self.traffic_log is not None:
            self.traffic_log.record(
                ScoredBatch(features.columns, probabilities, decisions, ids, times, self.model.version)
            )
        name, version, threshold = self.model.name, self.model.version, self.model.threshold
        return [
            {
                "transaction_id": ids[i],
                "fraud_probability": probabilities[i],
                "decision": decisions[i],
                "threshold": threshold,
                "model_name": name,
                "model_version": version,
                "missing_features": missing[i],
                "stale_features": stale[i],
                "unknown_entities": features.unknown_entities[i],
            }
            for i in range(len(ids))
        ]


class CoalescingScorer:
    """Scores concurrent requests together: while one batch is out, new requests wait and go as the next one.

    A lone request is scored at once (no added wait, unlike a batching window); under load, the requests that
    arrive during one Redis round trip share the next one, and one CatBoost call. The fixed costs (a round
    trip, a CatBoost pool) are then paid per batch instead of per request. BentoML's adaptive batching would
    do the same but needs ``@bentoml.api`` endpoints, which cost ~1 ms per request here.
    """

    def __init__(self, scoring: OnlineScoring, max_rows: int = 64) -> None:
        self.scoring = scoring
        self.max_rows = max_rows
        self._busy = False
        self._waiting: list[
            tuple[Sequence[transaction.Transaction], asyncio.Future[list[dict[str, Any]]]]
        ] = []
        self._drainer: asyncio.Task[None] | None = None

    async def score(self, requests: Sequence[transaction.Transaction]) -> list[dict[str, Any]]:
        if not self._busy:
            self._busy = True
            try:
                return await self.scoring.score(requests)
            finally:
                self._busy = False
                if self._waiting:
                    self._start_draining()
        future: asyncio.Future[list[dict[str, Any]]] = asyncio.get_running_loop().create_future()
        self._waiting.append((requests, future))
        return await future

    def _start_draining(self) -> None:
        self._busy = True
        self._drainer = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch, rows = [], 0
                while self._waiting and (not batch or rows + len(self._waiting[0][0]) <= self.max_rows):
                    item = self._waiting.pop(0)
                    batch.append(item)
                    rows += len(item[0])
                try:
                    results = await self.scoring.score([r for requests, _ in batch for r in requests])
                except Exception as error:  # each waiting request answers for itself (a 503, say)
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                    continue
                start = 0
                for requests, future in batch:
                    if not future.done():  # its client may have gone away
                        future.set_result(results[start : start + len(requests)])
                    start += len(requests)
        finally:
            self._busy = False
            self._drainer = None
