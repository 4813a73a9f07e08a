"""Scoring a list of requests: online features, the model, the answer, metrics and the decision record.

Generic over the domain: ``services/scorer/transaction.py`` turns requests into Feast rows; everything here
works from the feature service and the model contract. Every decision is published to the transactions stream
(``services/stream/events.py``) before its answer is returned: the stream is the durable decision record, from
which the traffic log, the landing zone and the window processor work.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from model_store.scorer import MISSING_CATEGORY
from services.scorer import transaction
from services.scorer.online_features import OnlineStoreUnavailable
from services.stream.events import decision_json, encode, transaction_json
from services.stream.publish import xadd

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from services.scorer.metrics import ScorerMetrics
    from services.scorer.model import ServingModel
    from services.scorer.online_features import FeatureReader

logger = logging.getLogger(__name__)


class Reason(BaseModel):
    """One feature's part in a score."""

    feature: str
    value: float | str | None = Field(description="The value the model received (null: missing).")
    contribution: float = Field(
        description="Its SHAP value: signed, in log-odds; positive pushes towards fraud."
    )


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
        f"(NaN for numbers, {MISSING_CATEGORY!r} for categories)."
    )
    stale_features: list[str] = Field(description="Model features older than their feature view's TTL.")
    unknown_entities: list[str] = Field(
        description="Entities (customer, merchant) the online store has never seen."
    )
    reasons: list[Reason] | None = Field(
        None,
        description="With ?explain=N: the N features that moved this score most, largest contribution first.",
    )


class ScoreBatchResult(BaseModel):
    """The answer for a batch: one result per transaction, in the order they were sent."""

    results: list[ScoreResult]


class FeaturesMismatch(RuntimeError):
    """The model reads features its feature service does not provide."""


@dataclass
class Decided:
    """Answers for a list of requests, and their decision records (stream entry fields) to publish."""

    results: list[dict[str, Any]]
    records: list[dict[bytes, bytes]]


class DecisionPublisher:
    """Publishes decision records to the transactions stream in one round trip (awaited before answering)."""

    TIMEOUT_SECONDS = 1.0

    def __init__(
        self,
        client: Callable[[], Redis],
        stream: str,
        max_length: int,
        source: str = "scorer",
        busy_wait: float = 0.0,
    ) -> None:
        self.client = client
        self.stream = stream
        self.max_length = max_length
        self.source = source
        self.busy_wait = busy_wait

    async def publish(self, records: Sequence[dict[bytes, bytes]]) -> None:
        """XADD every record; ``OnlineStoreUnavailable`` when Redis does not take them (the caller answers 503)."""
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        from services.packed_commands import send

        try:
            async with asyncio.timeout(self.TIMEOUT_SECONDS):
                await send(
                    self.client().connection_pool,
                    [xadd(self.stream, r, self.max_length) for r in records],
                    busy_wait=self.busy_wait,
                )
        except (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError) as error:
            reason = str(error) or f"no answer within {self.TIMEOUT_SECONDS}s"
            raise OnlineStoreUnavailable(
                f"decision record unavailable: {self.stream} did not take the decisions: {reason}"
            ) from error


@dataclass(frozen=True)
class Models:
    """The models requests are decided with, replaced as a whole between requests (``OnlineScoring.swap``).

    ``challenger`` (the registry's ``challenger`` alias, when set) decides for the canary's customers; the shadow
    scorer (``services/stream/shadow.py``) scores the others with it from their decision records. ``baked``
    says the champion is the bento's own copy, not one read from the registry.
    """

    champion: ServingModel
    challenger: ServingModel | None = None
    baked: bool = False


def in_share(key: Any, share: float) -> bool:
    """Whether ``key`` falls in the first ``share`` of a stable hash space (sticky: the same key, the same side)."""
    if share <= 0:
        return False
    return share >= 1 or zlib.crc32(str(key).encode()) % 10_000 < share * 10_000


class OnlineScoring:
    """Scores requests end to end; the service's endpoints are thin wrappers around ``score``."""

    def __init__(
        self,
        reader: FeatureReader,
        model: ServingModel,
        metrics: ScorerMetrics,
        publisher: DecisionPublisher | None,
        canary_share: float = 0.0,
        baked: bool = False,
    ) -> None:
        check_serves(reader, model)
        self.reader = reader
        self.models = Models(model, baked=baked)
        self.metrics = metrics
        self.publisher = publisher
        self.canary_share = canary_share

    @property
    def model(self) -> ServingModel:
        """The champion deciding now."""
        return self.models.champion

    def swap(self, models: Models) -> None:
        """Decide the next requests with ``models``; requests in flight finish with the ones they started with."""
        self.models = models

    def check(self, model: ServingModel) -> None:
        """Refuse a model this service cannot feed (``FeaturesMismatch``)."""
        check_serves(self.reader, model)

    async def score(
        self, requests: Sequence[transaction.Transaction], explain: int = 0
    ) -> list[dict[str, Any]]:
        """One answer per request, in order, each decision recorded in the stream first; with ``explain``, each
        answer lists the features that moved its score most (``reasons``).

        Raises ``OnlineStoreUnavailable`` when the online store or the decision record does not answer.
        """
        decided = await self.decide(requests, record=self.publisher is not None, explain=explain)
        if self.publisher is not None:
            await self.publisher.publish(decided.records)
        return decided.results

    async def decide(
        self, requests: Sequence[transaction.Transaction], record: bool = True, explain: int = 0
    ) -> Decided:
        """Answers and (with ``record``) decision records; publishing them is the caller's, before answering."""
        models = self.models  # one snapshot: a swap while this batch is scored never mixes two versions in it
        champion, challenger = models.champion, models.challenger
        rows = transaction.feature_rows(requests)
        times = transaction.event_times(requests)
        ids = transaction.request_ids(requests)
        started = time.perf_counter()
        features = await self.reader.read(rows, times)
        self.metrics.feature_read_seconds.observe(time.perf_counter() - started)
        columns = features.columns
        deciders = [champion] * len(ids)
        scores, reasons = self._predict(champion, columns, explain)
        canary: list[int] = []
        if challenger is not None and self.canary_share > 0:
            canary = [i for i, c in enumerate(rows["customer_id"]) if in_share(c, self.canary_share)]
            if canary:
                subset = {name: [values[i] for i in canary] for name, values in columns.items()}
                canary_scores, canary_reasons = self._predict(challenger, subset, explain)
                for k, i in enumerate(canary):
                    scores[i], deciders[i] = canary_scores[k], challenger
                    if reasons is not None and canary_reasons is not None:
                        reasons[i] = canary_reasons[k]
        decisions = [m.decide_one(s) for m, s in zip(deciders, scores, strict=True)]
        model_features = frozenset(champion.features)
        missing = [[f for f in row if f in model_features] for row in features.missing]
        stale = [[f for f in row if f in model_features] for row in features.stale]
        self.metrics.observe_scores(scores)
        if any(missing):
            self.metrics.observe_missing(missing)
        results = [
            {
                "transaction_id": ids[i],
                "fraud_probability": scores[i],
                "decision": decisions[i],
                "threshold": deciders[i].threshold,
                "model_name": deciders[i].name,
                "model_version": deciders[i].version,
                "missing_features": missing[i],
                "stale_features": stale[i],
                "unknown_entities": features.unknown_entities[i],
            }
            for i in range(len(ids))
        ]
        if reasons is not None:
            for result, why in zip(results, reasons, strict=True):
                result["reasons"] = why
        records: list[dict[bytes, bytes]] = []
        if record:
            source = self.publisher.source if self.publisher is not None else "scorer"
            scored_at = datetime.now(UTC)
            # What the model received: numbers as floats (NaN is written as null), categories as text.
            inputs = champion.input_rows(columns)
            for request, result, features in zip(requests, results, inputs, strict=True):
                decision = decision_json(result, scored_at, features)
                records.append(encode(transaction_json(request), source, decision))
        return Decided(results, records)

    @staticmethod
    def _predict(
        model: ServingModel, columns: dict[str, list[Any]], explain: int
    ) -> tuple[list[float], list[list[dict[str, Any]]] | None]:
        """Scores, and with ``explain`` the reasons behind each (``ServingModel.predict_and_explain``)."""
        if explain:
            scores, reasons = model.predict_and_explain(columns, explain)
            return scores.tolist(), reasons
        return model.predict(columns).tolist(), None


def check_serves(reader: FeatureReader, model: ServingModel) -> None:
    """Refuse a model the service cannot feed: another feature service, or features the reader does not read."""
    if model.contract.feature_service != reader.plan.feature_service:
        raise FeaturesMismatch(
            f"model {model.name} v{model.version} was trained on feature service "
            f"{model.contract.feature_service!r}; this service reads {reader.plan.feature_service!r}"
        )
    absent = [name for name in model.features if name not in reader.plan.output_names]
    if absent:
        raise FeaturesMismatch(
            f"model {model.name} v{model.version} reads {absent}, which feature service "
            f"{reader.plan.feature_service!r} does not provide; re-apply the feature repository or rebuild "
            "the service with a matching model"
        )


class CoalescingScorer:
    """Scores concurrent requests together: while one batch is out, new requests wait and go as the next one.

    A lone request is scored at once (no added wait, unlike a batching window); under load, the requests that
    arrive during one Redis round trip share the next one, and one CatBoost call. The fixed costs (a round
    trip, a CatBoost pool) are then paid per batch instead of per request. BentoML's adaptive batching would
    do the same but needs ``@bentoml.api`` endpoints, whose per-request cost the service avoids.
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
