"""With an API key configured, a request without it gets 401 and no score; with it, a score."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from prometheus_client import REGISTRY

from model_store.settings import Settings
from tests.services.conftest import known_ids, scorer_client, transaction

if TYPE_CHECKING:
    from starlette.testclient import TestClient

KEY = "s3cret-key"


@pytest.fixture(scope="module")
def client(served_env: dict[str, str]) -> Iterator[TestClient]:
    with scorer_client(served_env, api_key=KEY) as test_client:
        yield test_client


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}, {"X-API-Key": ""}, {"Authorization": KEY}])
@pytest.mark.parametrize("path", ["/score", "/score_batch"])
def test_requests_without_the_key_get_401_and_no_score(
    client: TestClient, served_settings: Settings, headers: dict[str, str], path: str
) -> None:
    customers, merchants = known_ids(served_settings)
    tx = transaction(customers[0], merchants[0])
    body = tx if path == "/score" else {"transactions": [tx]}
    scored_before = REGISTRY.get_sample_value("fraud_score_count") or 0.0
    answer = client.post(path, json=body, headers=headers)
    assert answer.status_code == 401
    assert answer.json()["details"][0]["field"] == "X-API-Key"
    assert "fraud_probability" not in answer.text
    assert (REGISTRY.get_sample_value("fraud_score_count") or 0.0) == scored_before


def test_the_right_key_gets_a_score_and_probes_need_none(
    client: TestClient, served_settings: Settings
) -> None:
    customers, merchants = known_ids(served_settings)
    answer = client.post("/score", json=transaction(customers[0], merchants[0]), headers={"X-API-Key": KEY})
    assert answer.status_code == 200
    assert 0.0 <= answer.json()["fraud_probability"] <= 1.0
    # Bad input is still judged only after authentication.
    assert client.post("/score", content=b"{", headers={"X-API-Key": KEY}).status_code == 400
    assert client.post("/score", content=b"{").status_code == 401
    assert client.get("/readyz").status_code == 200
    assert client.get("/livez").status_code == 200
