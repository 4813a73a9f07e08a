"""Stream scoring: decisions for systems that publish transactions instead of calling ``POST /score``.

    python -m services.stream.scorer
    python -m services.stream.publish --score transactions.csv   # a client

It consumes the ``score-requests`` stream with its own consumer group and scores each transaction exactly as
``/score`` does: the registry's champion (followed as the service follows it, ``services/scorer/rollout.py``),
the same online features read the same way, the same code (``OnlineScoring.decide``). Each decision goes, in one Redis transaction with the request's acknowledgement,
to the transactions stream (the decision record, which the window processor, the traffic log and the landing
writer read) and to the ``decisions`` stream the requesting system reads. A crash before that transaction
leaves the request pending, to be scored again: no decision is lost or recorded twice.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from services.scorer.online_features import OnlineStoreUnavailable
from services.stream.consumer import Effects, Entry
from services.stream.events import decode_entries
from services.stream.publish import xadd
from services.stream.runner import Role, main

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from services.scorer.scoring import OnlineScoring
    from services.stream.settings import StreamSettings

logger = logging.getLogger(__name__)

GROUP = "stream-scorer"


class StreamScorer:
    """Score requests in, decision records out (see the module docstring)."""

    def __init__(self, scoring: OnlineScoring, transactions: str, decisions: str, max_length: int) -> None:
        self.scoring = scoring
        self.transactions = transactions
        self.decisions = decisions
        self.max_length = max_length

    async def handle(self, entries: list[Entry]) -> Effects:
        from redis.exceptions import ConnectionError as RedisConnectionError

        effects = Effects()
        requests = [event.transaction for _, event in decode_entries(entries, effects.dead_letters)]
        if not requests:
            return effects
        try:
            decided = await self.scoring.decide(requests)
        except OnlineStoreUnavailable as error:  # the consumer backs off and reads the batch again
            raise RedisConnectionError(str(error)) from error
        for record in decided.records:
            effects.commands.append(xadd(self.transactions, record, self.max_length))
            effects.commands.append(xadd(self.decisions, record, self.max_length))
        return effects


def open_scoring(settings: StreamSettings) -> OnlineScoring:
    """The champion from the registry over the online features, as the scoring service reads them."""
    from model_store.registry import load_champion
    from services.scorer.metrics import scorer_metrics
    from services.scorer.model import ServingModel
    from services.scorer.online_features import RedisFeatureReader, open_feature_reader
    from services.scorer.scoring import DecisionPublisher, OnlineScoring

    champion = load_champion(settings)
    model = ServingModel(champion.model, champion.name, champion.version, champion.contract)
    reader = open_feature_reader(settings, model.contract.feature_service)
    if not isinstance(reader, RedisFeatureReader):
        raise ValueError(f"stream scoring needs the Redis online store; it is {settings.online_store!r}")
    metrics = scorer_metrics()
    metrics.set_model(model.name, model.version)
    publisher = DecisionPublisher(
        reader.client, settings.stream("transactions"), settings.stream_max_length, "stream-scorer"
    )
    logger.info("stream scoring with %s v%s", model.name, model.version)
    return OnlineScoring(reader, model, metrics, publisher)


async def scorer_role(settings: StreamSettings, client: Redis, stopping: asyncio.Event) -> Role:
    from services.scorer.metrics import scorer_metrics
    from services.scorer.rollout import ModelFollower
    from services.scorer.settings import get_service_settings

    scoring = open_scoring(settings)
    scorer = StreamScorer(
        scoring, settings.stream("transactions"), settings.stream("decisions"), settings.stream_max_length
    )
    # It follows the registry's champion as the HTTP service does (RTML_MODEL_POLL_SECONDS; no shadow here).
    following: asyncio.Task[None] | None = None
    if get_service_settings().model_poll_seconds > 0:
        follower = ModelFollower(scoring, get_service_settings(), scorer_metrics())
        following = asyncio.get_running_loop().create_task(follower.run())

    async def release() -> None:
        if following is not None:
            following.cancel()
        await scoring.reader.close()

    return Role(
        name="stream-scorer",
        group=GROUP,
        streams=[settings.stream("score-requests")],
        handler=scorer.handle,
        release=release,
    )


if __name__ == "__main__":
    main(scorer_role)
