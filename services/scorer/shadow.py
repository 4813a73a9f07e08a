"""Shadow scoring: the model that did not decide a transaction scores it too, after the answer has left.

When the registry has a ``challenger``, every decision's transaction (or ``shadow_share`` of them, chosen by
transaction id) is queued here with the features it was decided on; a background task scores what is queued
every ``interval`` with one CatBoost call per model and publishes the scores to the shadow stream
(``rtml:shadow:<project>``, the ``transaction.v1`` format with source ``shadow``). The traffic log writes them
beside the prediction log, keyed by transaction id, so the drift report can set the challenger's live scores
against the champion's. The request pays only the append to the queue; a shadow score is best effort: when
Redis does not take it, it is counted and dropped (the decision itself is already recorded).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from services.stream.events import SHADOW, decision_json, encode, transaction_json
from services.stream.publish import xadd

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from services.scorer.model import ServingModel
    from services.scorer.transaction import Transaction

logger = logging.getLogger(__name__)


class ShadowScorer:
    """A queue of (transaction, features, model) and the task that scores and records them."""

    def __init__(
        self,
        client: Callable[[], Redis],
        stream: str,
        max_length: int,
        share: float,
        interval: float = 0.05,
        max_rows: int = 10_000,
    ) -> None:
        self.client = client
        self.stream = stream
        self.max_length = max_length
        self.share = share
        self.interval = interval
        self.max_rows = max_rows
        self.scored = 0
        self.dropped = 0
        self._queue: list[tuple[Transaction, dict[str, Any], ServingModel]] = []

    def submit(
        self, requests: Sequence[Transaction], columns: dict[str, list[Any]], models: Sequence[ServingModel]
    ) -> None:
        """Queue each request (in the share) with its row of features and the model to shadow it with."""
        from services.scorer.scoring import in_share

        for i, request in enumerate(requests):
            if in_share(request.transaction_id, self.share):
                if len(self._queue) >= self.max_rows:  # the scorer fell behind: shed rather than grow
                    self.dropped += 1
                    continue
                self._queue.append(
                    (request, {name: values[i] for name, values in columns.items()}, models[i])
                )

    @staticmethod
    def _score(queued: list[tuple[Transaction, dict[str, Any], ServingModel]]) -> list[dict[bytes, bytes]]:
        by_model: dict[int, list[tuple[Transaction, dict[str, Any], ServingModel]]] = {}
        for item in queued:
            by_model.setdefault(id(item[2]), []).append(item)
        records = []
        scored_at = datetime.now(UTC)
        for items in by_model.values():
            model = items[0][2]
            columns = {name: [row[name] for _, row, _ in items] for name in items[0][1]}
            for (request, _, _), score in zip(items, model.predict(columns).tolist(), strict=True):
                result = {
                    "fraud_probability": score,
                    "decision": model.decide_one(score),
                    "threshold": model.threshold,
                    "model_name": model.name,
                    "model_version": model.version,
                }
                records.append(
                    encode(transaction_json(request), SHADOW, decision_json(result, scored_at, {}))
                )
        return records

    async def run(self) -> None:
        """Score and record what is queued, every ``interval``, until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            with contextlib.suppress(Exception):
                await self.flush()

    async def flush(self) -> int:
        """Score and publish the queue now; returns how many were recorded."""
        queued, self._queue = self._queue, []
        if not queued:
            return 0
        # In a thread: CatBoost releases the GIL while it scores, so requests keep being answered meanwhile.
        records = await asyncio.to_thread(self._score, queued)
        try:
            from services.packed_commands import send

            await send(
                self.client().connection_pool, [xadd(self.stream, r, self.max_length) for r in records]
            )
        except Exception as error:
            self.dropped += len(records)
            logger.warning("shadow scores not recorded (%s): %d dropped", error, len(records))
            return 0
        self.scored += len(records)
        return len(records)
