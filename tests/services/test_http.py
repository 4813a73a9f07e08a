"""The service over real HTTP (``bentoml serve`` in a subprocess) on a Redis of its own that the test stops."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from deploy.local.servers import kill_tree
from model_store.profiles import ProfileStore
from model_store.registry import load_champion
from model_store.settings import Settings, clear_settings
from tests.services.conftest import (
    RedisServer,
    Server,
    bentoml_serve,
    copy_entity_hashes,
    install_env,
    known_ids,
    transaction,
)

KEY = "http-test-key"


@pytest.fixture(scope="module")
def http_settings(served_env: dict[str, str]) -> Iterator[Settings]:
    with pytest.MonkeyPatch.context() as mp:
        yield install_env(served_env, mp)
    clear_settings()


@pytest.fixture(scope="module")
def server(
    served_env: dict[str, str], http_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("http")
    redis_server = RedisServer(workdir)
    redis_server.start()
    customers, merchants = known_ids(http_settings)
    copy_entity_hashes(
        http_settings, redis_server.url, {"customer_id": customers[:5], "merchant_id": merchants[:5]}
    )
    env = {**served_env, "RTML_REDIS_URL": redis_server.url, "RTML_API_KEY": KEY}
    try:
        with bentoml_serve(env, workdir, redis_server) as served:
            yield served
    finally:
        redis_server.stop()


def score(server: Server, payload: dict, key: str | None = KEY) -> httpx.Response:
    headers = {"X-API-Key": key} if key else {}
    return httpx.post(f"{server.url}/score", json=payload, headers=headers, timeout=10)


def test_scores_over_http_with_the_key_and_refuses_without(server: Server, http_settings: Settings) -> None:
    customers, merchants = known_ids(http_settings)
    answer = score(server, transaction(customers[0], merchants[0], 1))
    assert answer.status_code == 200
    body = answer.json()
    champion = load_champion(http_settings)
    assert (body["model_name"], body["model_version"]) == (champion.name, champion.version)
    assert body["unknown_entities"] == [] and body["missing_features"] == []
    refused = score(server, transaction(customers[0], merchants[0], 2), key=None)
    assert refused.status_code == 401 and "fraud_probability" not in refused.text
    bad = score(server, transaction(customers[0], merchants[0], 3, amount=-1))
    assert bad.status_code == 422 and bad.json()["details"][0]["field"] == "amount"


def test_metrics_endpoint_exports_ours_and_bentomls(server: Server, http_settings: Settings) -> None:
    customers, merchants = known_ids(http_settings)
    assert score(server, transaction(customers[1], merchants[1], 4)).status_code == 200
    assert score(server, transaction(987_000_111, merchants[1], 5)).status_code == 200
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    for name in (
        "online_feature_read_seconds_bucket",
        "online_features_missing_total",
        "fraud_score_bucket",
        "model_version_info",
        "bentoml_service_request_total",
        "bentoml_service_request_duration_seconds_bucket",
    ):
        assert name in text, name
    champion = load_champion(http_settings)
    assert (
        f'model_version_info{{model_name="{champion.name}",model_version="{champion.version}"}} 1.0' in text
    )
    assert 'endpoint="/score"' in text


def test_bentoml_client_finds_and_calls_the_scoring_endpoints(
    server: Server, http_settings: Settings
) -> None:
    import bentoml
    from bentoml.exceptions import BentoMLException

    customers, merchants = known_ids(http_settings)
    sent = transaction(customers[4], merchants[4], 20)
    # The client reads its endpoints from /schema.json; the key goes in a header of its HTTP client.
    with bentoml.SyncHTTPClient(server.url) as client:
        client.client.headers["X-API-Key"] = KEY
        assert {"score", "score_batch"} <= set(client.endpoints)
        answer = client.score(**sent)
        assert answer["transaction_id"] == sent["transaction_id"] and 0 <= answer["fraud_probability"] <= 1
        batch = client.score_batch(transactions=[sent, transaction(customers[4], merchants[4], 21)])
        assert [r["transaction_id"] for r in batch["results"]] == [
            sent["transaction_id"],
            f"svc-{customers[4]}-{merchants[4]}-21",
        ]
        with pytest.raises(BentoMLException, match="amount") as refused:
            client.score(**{**sent, "amount": -1})
        assert refused.value.error_code == 422


def test_redis_stopped_gives_503_and_not_ready_then_recovers_without_restart(
    server: Server, http_settings: Settings
) -> None:
    customers, merchants = known_ids(http_settings)
    payload = transaction(customers[2], merchants[2], 6)
    assert score(server, payload).status_code == 200

    server.redis.stop()
    down = score(server, payload)
    assert down.status_code == 503
    assert "online feature store unavailable" in down.json()["error"]
    assert down.headers["Retry-After"] == "1"
    assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 503
    assert httpx.get(f"{server.url}/livez", timeout=10).status_code == 200

    server.redis.start()
    copy_entity_hashes(
        http_settings, server.redis.url, {"customer_id": customers[:5], "merchant_id": merchants[:5]}
    )
    assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200
    back = score(server, payload)
    assert back.status_code == 200 and back.json()["unknown_entities"] == []
    assert server.process.poll() is None


def test_a_sigkill_after_answering_loses_no_decision(server: Server, http_settings: Settings) -> None:
    """Every answered decision is in the stream before its answer left: killed at once (an OOM kill, a node
    failure), the service loses none, and the traffic log turns them into predictions. Runs last: it kills."""
    import asyncio

    import redis

    from services.stream.consumer import Entry
    from services.stream.traffic import TrafficRecorder

    customers, merchants = known_ids(http_settings)
    answered = []
    for i in range(40):
        payload = transaction(customers[i % 5], merchants[i % 5], 20 + i, transaction_id=f"kill-{i}")
        assert score(server, payload).status_code == 200
        answered.append(payload["transaction_id"])
    killed = kill_tree(server.process.pid)
    server.process.wait(10)
    assert len(killed) >= 2, "the server and its worker"

    client = redis.Redis.from_url(server.redis.url)
    stream = http_settings.stream("transactions")
    entries = [Entry(stream, entry_id, fields) for entry_id, fields in client.xrange(stream)]
    client.close()
    store = ProfileStore(http_settings.profile_store, http_settings.model_name)
    recorder = TrafficRecorder(store, flush_seconds=3600)

    async def record() -> list[Entry]:
        effects = await recorder.handle(entries)
        return [*effects.ack, *await recorder.flush()]

    recorded = asyncio.run(record())
    now = datetime.now(UTC)
    logged = store.read_predictions(now - timedelta(hours=2), now + timedelta(hours=1))
    assert set(answered) <= set(logged["transaction_id"])
    assert len(recorded) == len(entries)
    assert store.read_window(now - timedelta(hours=2), now + timedelta(hours=1)) is not None
