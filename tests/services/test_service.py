"""The service in-process: scores equal offline scoring, unknowns are flagged, bad input gets a named 4xx."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from prometheus_client import REGISTRY

from model_store.registry import load_champion
from model_store.settings import REPO_ROOT, Settings
from services.scorer.scoring import ScoreResult
from tests.conftest import leading_patches
from tests.services.champion import TEST_THRESHOLD, online_feature_frame
from tests.services.conftest import known_ids, scorer_client, transaction

if TYPE_CHECKING:
    from starlette.testclient import TestClient

UNKNOWN_CUSTOMER, UNKNOWN_MERCHANT = 987_000_001, 987_000_002


@pytest.fixture(scope="module")
def client(served_env: dict[str, str]) -> Iterator[TestClient]:
    with scorer_client(served_env) as test_client:
        yield test_client


def offline_scores(settings: Settings, transactions: list[dict[str, Any]]) -> np.ndarray:
    """The champion's scores on the same features, read through Feast's SDK and scored as a DataFrame."""
    rows = {
        "customer_id": [t["customer_id"] for t in transactions],
        "merchant_id": [t["merchant_id"] for t in transactions],
        "amount": [t["amount"] for t in transactions],
        "channel": [t["channel"] for t in transactions],
        "transaction_unix": [int(datetime.fromisoformat(t["timestamp"]).timestamp()) for t in transactions],
    }
    return load_champion(settings).score(online_feature_frame(settings, rows))


def test_known_entities_score_like_the_model_offline(client: TestClient, served_settings: Settings) -> None:
    customers, merchants = known_ids(served_settings)
    sent = [transaction(customers[i], merchants[i % len(merchants)], i) for i in range(6)]
    answers = [client.post("/score", json=t) for t in sent]
    assert [a.status_code for a in answers] == [200] * 6
    results = [ScoreResult.model_validate(a.json()) for a in answers]
    expected = offline_scores(served_settings, sent)
    assert [r.fraud_probability for r in results] == expected.tolist()
    champion = load_champion(served_settings)
    for sent_tx, result in zip(sent, results, strict=True):
        assert result.transaction_id == sent_tx["transaction_id"]
        assert result.decision == ("decline" if result.fraud_probability >= TEST_THRESHOLD else "approve")
        assert (result.model_name, result.model_version, result.threshold) == (
            champion.name,
            champion.version,
            TEST_THRESHOLD,
        )
        assert result.missing_features == result.stale_features == result.unknown_entities == []


def test_unknown_entities_get_defaults_and_a_flag_never_a_500(
    client: TestClient, served_settings: Settings
) -> None:
    customers, merchants = known_ids(served_settings)
    sent = [
        transaction(UNKNOWN_CUSTOMER, merchants[0], 1),
        transaction(customers[0], UNKNOWN_MERCHANT, 2),
        transaction(UNKNOWN_CUSTOMER, UNKNOWN_MERCHANT, 3),
    ]
    results = [client.post("/score", json=t) for t in sent]
    assert [r.status_code for r in results] == [200, 200, 200]
    body = [r.json() for r in results]
    assert [b["unknown_entities"] for b in body] == [["customer"], ["merchant"], ["customer", "merchant"]]
    assert {"txn_count_1h", "home_region", "credit_limit"} <= set(body[0]["missing_features"])
    assert "merchant_category" not in body[0]["missing_features"]
    assert {"merchant_txn_count_1h", "merchant_fraud_rate_30d", "merchant_category"} <= set(
        body[1]["missing_features"]
    )
    # The defaults are the model's own (model_store.scorer): the same score as offline scoring of nulls.
    assert [b["fraud_probability"] for b in body] == offline_scores(served_settings, sent).tolist()


def test_batch_answers_in_order_and_matches_single_scores(
    client: TestClient, served_settings: Settings
) -> None:
    customers, merchants = known_ids(served_settings)
    sent = [transaction(customers[i % 40], merchants[i % 9], i) for i in range(60)]
    sent[7] = transaction(UNKNOWN_CUSTOMER, merchants[0], 7)
    answer = client.post("/score_batch", json={"transactions": sent})
    assert answer.status_code == 200
    results = answer.json()["results"]
    assert [r["transaction_id"] for r in results] == [t["transaction_id"] for t in sent]
    assert [r["fraud_probability"] for r in results] == offline_scores(served_settings, sent).tolist()
    assert results[7]["unknown_entities"] == ["customer"]
    single = client.post("/score", json=sent[3]).json()
    assert single == results[3]


def too_many(settings_size: int = 1001) -> bytes:
    tx = transaction(1, 1)
    return json.dumps({"transactions": [tx] * settings_size}).encode()


@pytest.mark.parametrize(
    ("path", "body", "status", "field", "reason"),
    [
        ("/score", b"{not json", 400, "body", "Invalid JSON"),
        ("/score", b"", 400, "body", "Invalid JSON"),
        ("/score", b"[1, 2]", 422, "body", "an object"),
        ("/score", json.dumps({"customer_id": 1}).encode(), 422, "transaction_id", "Field required"),
        ("/score", json.dumps(transaction(1, 1, amount=-10)).encode(), 422, "amount", "greater than 0"),
        ("/score", json.dumps(transaction(1, 1, amount=1e9)).encode(), 422, "amount", "less than or equal"),
        (
            "/score",
            json.dumps(transaction(1, 1, customer_id="7")).encode(),
            422,
            "customer_id",
            "valid integer",
        ),
        ("/score", json.dumps(transaction(1, 1, channel="fax")).encode(), 422, "channel", "'chip'"),
        (
            "/score",
            json.dumps(transaction(1, 1, timestamp="2026-01-01")).encode(),
            422,
            "timestamp",
            "timezone",
        ),
        (
            "/score",
            json.dumps(transaction(1, 1, amount=float("nan"))).encode(),
            422,
            "amount",
            "finite number",
        ),
        ("/score_batch", json.dumps({"transactions": []}).encode(), 422, "transactions", "at least 1"),
        (
            "/score_batch",
            json.dumps({"transactions": [transaction(1, 1), transaction(1, 1, amount=-1)]}).encode(),
            422,
            "transactions.1.amount",
            "greater than 0",
        ),
        ("/score_batch", too_many(), 413, "transactions", "at most 1000"),
    ],
)
def test_bad_input_gets_a_4xx_naming_field_and_reason(
    client: TestClient, path: str, body: bytes, status: int, field: str, reason: str
) -> None:
    answer = client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == status
    problem = answer.json()
    assert problem["error"]
    assert any(d["field"] == field and reason in d["reason"] for d in problem["details"]), problem


def test_oversized_bodies_and_wrong_methods_are_refused(client: TestClient) -> None:
    huge = b'{"transaction_id": "' + b"x" * 70_000 + b'"}'
    answer = client.post("/score", content=huge)
    assert answer.status_code == 413 and "exceeds the limit" in answer.json()["error"]
    assert answer.json()["details"] == [{"field": "body", "reason": "larger than 65536 bytes"}]
    assert client.get("/score").status_code == 405


def test_probes_report_ready_and_metrics_are_registered(
    client: TestClient, served_settings: Settings
) -> None:
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 200
    before = REGISTRY.get_sample_value("fraud_score_count") or 0.0
    reads = REGISTRY.get_sample_value("online_feature_read_seconds_count") or 0.0
    customers, merchants = known_ids(served_settings)
    assert client.post("/score", json=transaction(UNKNOWN_CUSTOMER, merchants[0], 4)).status_code == 200
    assert client.post("/score", json=transaction(customers[0], merchants[0], 5)).status_code == 200
    assert REGISTRY.get_sample_value("fraud_score_count") == before + 2
    assert REGISTRY.get_sample_value("online_feature_read_seconds_count") == reads + 2
    assert (REGISTRY.get_sample_value("online_features_missing_total", {"feature": "home_region"}) or 0) >= 1
    champion = load_champion(served_settings)
    labels = {"model_name": champion.name, "model_version": champion.version}
    assert REGISTRY.get_sample_value("model_version_info", labels) == 1.0


def published(settings: Settings, ids: set[str]) -> dict[str, Any]:
    """The decision records of these transaction ids in the transactions stream, decoded, by id."""
    import redis

    from services.stream.events import decode

    client = redis.Redis.from_url(settings.redis_url)
    try:
        entries = client.xrange(settings.stream("transactions"))
    finally:
        client.close()
    events = (decode(entry_id, fields) for entry_id, fields in entries)
    return {e.transaction.transaction_id: e for e in events if e.transaction.transaction_id in ids}


def test_each_decision_is_published_with_its_model_input_before_the_answer(
    served_env: dict[str, str],
) -> None:
    from services.scorer.service import OnlineScorer
    from services.scorer.transaction import Transaction
    from tests.services.conftest import install_env

    with pytest.MonkeyPatch.context() as mp:
        settings = install_env(served_env, mp)
        customers, merchants = known_ids(settings)
        service = OnlineScorer()
        sent = [
            Transaction.model_validate(transaction(customers[i], merchants[i], i, transaction_id=f"rec-{i}"))
            for i in range(3)
        ]

        async def scenario() -> list[dict[str, Any]]:
            assert await service.__is_ready__()
            results = await service.scoring.score(sent)
            await service.close()
            return results

        results = asyncio.run(scenario())
        records = published(settings, {t.transaction_id for t in sent})
        assert set(records) == {t.transaction_id for t in sent}
        model = service.scoring.model
        for request, result in zip(sent, results, strict=True):
            record = records[request.transaction_id]
            assert record.source == "scorer" and record.transaction == request
            assert record.decision is not None
            assert record.decision.fraud_probability == result["fraud_probability"]
            assert record.decision.decision == result["decision"]
            assert record.decision.model_version == result["model_version"]
            assert list(record.decision.features) == model.features
            # What the model received: the score is reproduced from the recorded input alone.
            columns = {name: [record.decision.features[name]] for name in model.features}
            assert model.predict(columns)[0] == pytest.approx(result["fraud_probability"])


def test_with_publishing_off_the_service_scores_and_records_nothing(served_env: dict[str, str]) -> None:
    from services.scorer.service import OnlineScorer
    from services.scorer.transaction import Transaction
    from tests.services.conftest import install_env

    with pytest.MonkeyPatch.context() as mp:
        settings = install_env(served_env, mp, publish_decisions="false")
        customers, merchants = known_ids(settings)
        service = OnlineScorer()
        assert service.scoring.publisher is None
        sent = [
            Transaction.model_validate(
                transaction(customers[0], merchants[0], 0, transaction_id="unrecorded-1")
            )
        ]

        async def scenario() -> list[dict[str, Any]]:
            results = await service.scoring.score(sent)
            await service.close()
            return results

        assert asyncio.run(scenario())[0]["transaction_id"] == "unrecorded-1"
        assert published(settings, {"unrecorded-1"}) == {}


def test_concurrent_requests_share_batches_and_get_their_own_answers(served_env: dict[str, str]) -> None:
    from services.scorer.scoring import CoalescingScorer
    from services.scorer.service import OnlineScorer
    from services.scorer.transaction import Transaction
    from tests.services.conftest import install_env

    with pytest.MonkeyPatch.context() as mp:
        settings = install_env(served_env, mp)
        customers, merchants = known_ids(settings)
        service = OnlineScorer()
        sent = [
            Transaction.model_validate(transaction(customers[i], merchants[i % len(merchants)], i))
            for i in range(40)
        ]
        sent[5] = Transaction.model_validate(transaction(UNKNOWN_CUSTOMER, merchants[0], 5))
        batch_sizes: list[int] = []
        real_score = service.scoring.score

        async def counting_score(requests: list[Transaction]) -> list[dict[str, Any]]:
            batch_sizes.append(len(requests))
            return await real_score(requests)

        service.scoring.score = counting_score  # type: ignore[method-assign]
        coalescer = CoalescingScorer(service.scoring, max_rows=16)

        async def scenario() -> tuple[list[list[dict[str, Any]]], list[dict[str, Any]]]:
            together = await asyncio.gather(*(coalescer.score([t]) for t in sent))
            alone = await real_score(sent)
            await service.close()
            return together, alone

        together, alone = asyncio.run(scenario())
    assert [answers[0] for answers in together] == alone  # same answers, each to its own request
    assert batch_sizes[0] == 1  # the first request did not wait for company
    assert max(batch_sizes) == 16 and sum(batch_sizes) == 40 and len(batch_sizes) < 10
    assert together[5][0]["unknown_entities"] == ["customer"]


def test_scoring_endpoints_skip_tracing_unless_configured() -> None:
    from services.scorer.service import OnlineScorer

    # Spans cost a quarter of a worker at 32 connections with no exporter (docs/deployment.md).
    assert {"/score", "/score_batch"} <= set(OnlineScorer.config["tracing"]["excluded_urls"])


def test_the_service_patches_typeguard_before_it_imports_feast() -> None:
    """As ``bentoml serve`` runs it: the module imports without Feast, then ``__init__`` patches first."""
    from services.scorer.service import OnlineScorer

    code = "import sys\nimport services.scorer.service\nprint('feast' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.split()[-1] == "False"
    assert leading_patches(OnlineScorer.inner.__init__) == ["typeguard"]
