"""Stream scoring decides each transaction as POST /score does, and records it exactly once."""

from __future__ import annotations

import asyncio

import pytest
import redis

from model_store.settings import Settings
from services.packed_commands import send
from services.scorer.transaction import Transaction
from services.stream.consumer import Entry
from services.stream.events import decode
from services.stream.publish import publish
from services.stream.scorer import StreamScorer, open_scoring
from services.stream.settings import get_stream_settings
from tests.services.conftest import known_ids, transaction


def test_stream_scoring_gives_the_decision_score_gives(served_settings: Settings) -> None:
    settings = get_stream_settings()
    customers, merchants = known_ids(settings)
    requests = [
        Transaction.model_validate(
            transaction(customers[i], merchants[i], i, transaction_id=f"stream-req-{i}")
        )
        for i in range(4)
    ]
    client = redis.Redis.from_url(settings.redis_url)
    asked = settings.stream("score-requests")
    start = client.xinfo_stream(asked)["last-generated-id"] if client.exists(asked) else b"0-0"
    publish(client, asked, requests, "upstream", settings.stream_max_length)
    entries = [Entry(asked, i, f) for i, f in client.xrange(asked, min=b"(" + start)]

    async def scenario() -> tuple[list, list]:
        from redis.asyncio import Redis

        scoring = open_scoring(settings)
        scorer = StreamScorer(
            scoring, settings.stream("transactions"), settings.stream("decisions"), settings.stream_max_length
        )
        effects = await scorer.handle(entries)
        async_client = Redis.from_url(settings.redis_url)
        await send(async_client.connection_pool, effects.commands)
        await async_client.aclose()
        # The same transactions through the service's own path, features unchanged meanwhile.
        answers = await scoring.score(requests)
        await scoring.reader.close()
        return effects.commands, answers

    commands, answers = asyncio.run(scenario())
    assert len(commands) == 2 * len(requests)
    decided = {}
    for entry_id, fields in client.xrange(settings.stream("decisions")):
        event = decode(entry_id, fields)
        if event.transaction.transaction_id.startswith("stream-req-"):
            decided[event.transaction.transaction_id] = event
    client.close()
    assert set(decided) == {r.transaction_id for r in requests}
    for answer in answers:
        record = decided[answer["transaction_id"]]
        assert record.source == "stream-scorer" and record.decision is not None
        assert record.decision.decision == answer["decision"]
        assert record.decision.fraud_probability == pytest.approx(answer["fraud_probability"], abs=1e-12)
        assert record.decision.model_version == answer["model_version"]
