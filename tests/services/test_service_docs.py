"""The scoring API in the service's OpenAPI document (``/docs.json``): listed beside BentoML's own endpoints,
described by the pydantic models, and every kind of real answer matches what the document says.

Each test runs its own in-process service (the ASGI app serves one instance at a time): without an API key,
with one, and over a Redis the test stops.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import jsonschema
import pytest

from model_store.settings import Settings
from services.scorer.transaction import CHANNELS, MAX_AMOUNT
from tests.services.conftest import RedisServer, copy_entity_hashes, known_ids, scorer_client, transaction

if TYPE_CHECKING:
    import httpx

KEY = "docs-test-key"
REF = "#/components/schemas/{model}"
OPERATIONS = {
    "/score": ("Transaction", "ScoreResult"),
    "/score_batch": ("TransactionBatch", "ScoreBatchResult"),
}
ERRORS = {"400", "413", "422", "503"}


@pytest.fixture(scope="module")
def docs(served_env: dict[str, str]) -> dict[str, Any]:
    """The document a service without an API key serves (the service is stopped again at once)."""
    with scorer_client(served_env) as client:
        answer = client.get("/docs.json")
    assert answer.status_code == 200
    return answer.json()


def schema_validator(docs: dict[str, Any], schema: dict[str, Any]) -> jsonschema.Draft4Validator:
    """A validator of ``schema`` whose references resolve in the document (OpenAPI 3.0 schemas are draft 4's)."""
    return jsonschema.Draft4Validator({**schema, "components": docs["components"]})


def assert_documented(docs: dict[str, Any], path: str, answer: httpx.Response) -> None:
    """The answer's status is documented for ``path``, and its body and headers are what the document says."""
    responses = docs["paths"][path]["post"]["responses"]
    status = str(answer.status_code)
    assert status in responses, f"POST {path} answered {status}: not among {sorted(responses)}"
    documented = responses[status]
    assert answer.headers["content-type"] == "application/json"
    schema_validator(docs, documented["content"]["application/json"]["schema"]).validate(answer.json())
    for name, header in documented.get("headers", {}).items():
        assert name in answer.headers or not header.get("required"), f"{status} lacks the {name} header"
        if name in answer.headers:
            value: Any = answer.headers[name]
            jsonschema.Draft4Validator(header["schema"]).validate(
                int(value) if header["schema"].get("type") == "integer" else value
            )


def test_docs_list_the_scoring_operations_beside_bentomls_own(docs: dict[str, Any]) -> None:
    assert docs["openapi"].startswith("3.0.")
    assert {"/healthz", "/livez", "/readyz", "/metrics"} <= docs["paths"].keys()
    for path, (request, response) in OPERATIONS.items():
        post = docs["paths"][path]["post"]
        assert post["requestBody"]["required"] is True
        assert post["requestBody"]["content"]["application/json"]["schema"] == {
            "$ref": REF.format(model=request)
        }
        responses = post["responses"]
        assert responses["200"]["content"]["application/json"]["schema"] == {
            "$ref": REF.format(model=response)
        }
        assert responses.keys() == {"200", *ERRORS}  # no 401: this service has no API key
        for status in ERRORS:
            error = responses[status]["content"]["application/json"]["schema"]
            assert error == {"$ref": REF.format(model="ErrorBody")}
        assert responses["503"]["headers"]["Retry-After"]["required"] is True
        assert "security" not in post
    assert "1000 transactions" in docs["paths"]["/score_batch"]["post"]["responses"]["413"]["description"]
    assert "securitySchemes" not in docs["components"]
    for schema in docs["components"]["schemas"].values():
        jsonschema.Draft4Validator.check_schema(schema)


def test_documented_request_schemas_accept_what_the_models_accept(docs: dict[str, Any]) -> None:
    from pydantic import ValidationError

    from services.scorer.transaction import Transaction

    schemas = docs["components"]["schemas"]
    assert schemas["Transaction"]["properties"]["channel"]["enum"] == list(CHANNELS)
    assert set(schemas["Transaction"]["required"]) == set(Transaction.model_fields)
    document = schema_validator(docs, {"$ref": REF.format(model="Transaction")})
    samples = [
        transaction(1, 2),
        transaction(1, 2, amount=MAX_AMOUNT),
        transaction(1, 2, amount=MAX_AMOUNT + 0.01),
        transaction(1, 2, amount=0),
        transaction(0, 2),
        transaction(1, 2**63),
        transaction(1, 2, channel="fax"),
        transaction(1, 2, transaction_id=""),
        transaction(1, 2, transaction_id="x" * 129),
        {k: v for k, v in transaction(1, 2).items() if k != "merchant_id"},
    ]
    for sample in samples:
        try:
            Transaction.model_validate_json(json.dumps(sample))
            accepted = True
        except ValidationError:
            accepted = False
        assert document.is_valid(sample) == accepted, sample
    batch = schema_validator(docs, {"$ref": REF.format(model="TransactionBatch")})
    assert batch.is_valid({"transactions": [transaction(1, 2)]})
    assert not batch.is_valid({"transactions": []})
    assert not batch.is_valid({"transactions": [transaction(1, 2)], "extra": 1})


def test_every_kind_of_answer_matches_the_document(
    served_env: dict[str, str], served_settings: Settings
) -> None:
    customers, merchants = known_ids(served_settings)
    good = transaction(customers[0], merchants[0], 1)
    with scorer_client(served_env, max_batch_size="3") as client:
        docs = client.get("/docs.json").json()
        sent = {
            "/score": [
                (200, json.dumps(good)),
                (200, json.dumps(transaction(987_000_001, merchants[0], 2))),  # unknown customer
                (400, "{not json"),
                (422, json.dumps({**good, "amount": -1})),
                (422, "[1, 2]"),
                (413, json.dumps({**good, "transaction_id": "x" * 70_000})),
            ],
            "/score_batch": [
                (200, json.dumps({"transactions": [good, transaction(customers[1], merchants[1], 3)]})),
                (400, ""),
                (422, json.dumps({"transactions": [good, {**good, "channel": "fax"}]})),
                (413, json.dumps({"transactions": [good] * 4})),
            ],
        }
        for path, cases in sent.items():
            for status, body in cases:
                answer = client.post(path, content=body, headers={"Content-Type": "application/json"})
                assert answer.status_code == status, (path, body[:80], answer.text)
                assert_documented(docs, path, answer)
    assert (
        "more than 3 transactions" in docs["paths"]["/score_batch"]["post"]["responses"]["413"]["description"]
    )


def test_store_down_answer_matches_the_document(
    served_env: dict[str, str], served_settings: Settings, private_redis: RedisServer
) -> None:
    customers, merchants = known_ids(served_settings)
    copy_entity_hashes(
        served_settings, private_redis.url, {"customer_id": customers[:1], "merchant_id": merchants[:1]}
    )
    with scorer_client(served_env, redis_url=private_redis.url) as client:
        docs = client.get("/docs.json").json()
        assert client.post("/score", json=transaction(customers[0], merchants[0], 1)).status_code == 200
        private_redis.stop()
        for path, body in (
            ("/score", transaction(customers[0], merchants[0], 2)),
            ("/score_batch", {"transactions": [transaction(customers[0], merchants[0], 3)]}),
        ):
            answer = client.post(path, json=body)
            assert answer.status_code == 503
            assert_documented(docs, path, answer)


def test_with_an_api_key_the_docs_require_it_and_the_401_matches(
    served_env: dict[str, str], served_settings: Settings
) -> None:
    customers, merchants = known_ids(served_settings)
    with scorer_client(served_env, api_key=KEY) as client:
        docs = client.get("/docs.json").json()  # the documents themselves need no key
        assert docs["components"]["securitySchemes"]["ApiKey"] == {
            "type": "apiKey",
            "in": "header",
            "name": "X-API-Key",
        }
        for path, body in (
            ("/score", transaction(customers[0], merchants[0], 1)),
            ("/score_batch", {"transactions": [transaction(customers[0], merchants[0], 2)]}),
        ):
            post = docs["paths"][path]["post"]
            assert post["security"] == [{"ApiKey": []}]
            assert post["responses"].keys() == {"200", "401", *ERRORS}
            refused = client.post(path, json=body)
            assert refused.status_code == 401
            assert_documented(docs, path, refused)
            assert_documented(docs, path, client.post(path, json=body, headers={"X-API-Key": KEY}))
