"""Operations described from pydantic models and merged into BentoML's documents, without a server."""

from __future__ import annotations

import json
import logging
from typing import Literal

import jsonschema
import pytest
from pydantic import BaseModel, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from services.scorer import openapi
from services.scorer.openapi import (
    ApiDescription,
    ApiDocsMiddleware,
    ErrorCase,
    Operation,
    add_to_bentoml_client_schema,
    add_to_openapi,
    openapi30,
)


class Item(BaseModel):
    name: str = Field(min_length=1)
    price: float = Field(gt=0, lt=100)
    kind: Literal["only"]
    note: str | None = None


class Basket(BaseModel):
    items: list[Item]
    gift: Item | None = None


class Answer(BaseModel):
    total: float


class Problem(BaseModel):
    error: str


API = ApiDescription(
    service="shop",
    operations=(
        Operation("/price", "price", "Price a basket.", Basket, Answer, {422: ErrorCase("Bad basket.")}),
    ),
    error=Problem,
)
BENTOML_DOCS = {
    "openapi": "3.0.2",
    "paths": {"/readyz": {"get": {"responses": {"200": {"description": "Ready"}}}}},
    "components": {"schemas": {"NotFound": {"type": "object"}}},
}


def test_openapi30_translates_what_openapi_3_0_spells_otherwise() -> None:
    schema = openapi30(Item.model_json_schema())
    price = schema["properties"]["price"]
    assert price["minimum"] == 0 and price["exclusiveMinimum"] is True
    assert price["maximum"] == 100 and price["exclusiveMaximum"] is True
    assert schema["properties"]["kind"]["enum"] == ["only"] and "const" not in schema["properties"]["kind"]
    note = schema["properties"]["note"]
    assert note["nullable"] is True and note["type"] == "string" and "anyOf" not in note
    jsonschema.Draft4Validator.check_schema(schema)  # OpenAPI 3.0 bounds are draft 4's
    validator = jsonschema.Draft4Validator(schema)
    assert validator.is_valid({"name": "a", "price": 99.5, "kind": "only"})
    assert not validator.is_valid({"name": "a", "price": 0, "kind": "only"})
    assert not validator.is_valid({"name": "a", "price": 100, "kind": "only"})


def test_openapi30_keeps_a_nullable_reference_wrapped_and_refuses_what_it_cannot_spell() -> None:
    gift = openapi30(
        Basket.model_json_schema(ref_template="#/components/schemas/{model}")["properties"]["gift"]
    )
    assert gift == {"allOf": [{"$ref": "#/components/schemas/Item"}], "nullable": True, "default": None}
    with pytest.raises(ValueError, match="prefixItems"):
        openapi30({"type": "array", "prefixItems": [{"type": "integer"}]})
    with pytest.raises(ValueError, match="null type"):
        openapi30({"type": "null"})


def test_add_to_openapi_keeps_bentomls_entries_and_refuses_a_clashing_component() -> None:
    document = add_to_openapi(BENTOML_DOCS, API)
    assert set(document["paths"]) == {"/readyz", "/price"}
    assert set(document["components"]["schemas"]) == {"NotFound", "Basket", "Item", "Answer", "Problem"}
    post = document["paths"]["/price"]["post"]
    assert post["operationId"] == "shop__price"
    assert post["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Basket"
    }
    assert post["responses"]["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Problem"
    }
    assert "security" not in post and "securitySchemes" not in document["components"]
    clash = {**BENTOML_DOCS, "components": {"schemas": {"Answer": {"type": "string"}}}}
    with pytest.raises(ValueError, match=r"components\.schemas\.Answer"):
        add_to_openapi(clash, API)


def test_an_api_key_header_becomes_a_security_requirement() -> None:
    keyed = ApiDescription(API.service, API.operations, API.error, api_key_header="X-Key")
    document = add_to_openapi(BENTOML_DOCS, keyed)
    assert document["components"]["securitySchemes"] == {
        "ApiKey": {"type": "apiKey", "in": "header", "name": "X-Key"}
    }
    assert document["paths"]["/price"]["post"]["security"] == [{"ApiKey": []}]


def test_client_schema_lists_the_operations_only_on_the_bentoml_version_it_was_written_for(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    bentoml_schema = {"name": "shop", "routes": [], "paths": {"/price": {"mounted": True}}}
    listed = add_to_bentoml_client_schema(bentoml_schema, API)
    assert [(r["name"], r["route"]) for r in listed["routes"]] == [("price", "/price")]
    assert listed["routes"][0]["input"]["properties"].keys() == {"items", "gift"}
    monkeypatch.setattr(openapi, "version", lambda _: "9.9.9")
    with caplog.at_level(logging.WARNING, logger=openapi.__name__):
        assert add_to_bentoml_client_schema(bentoml_schema, API) == bentoml_schema
    assert "bentoml 9.9.9 is installed" in caplog.text


def test_middleware_extends_only_the_two_documents_and_passes_the_rest_through() -> None:
    calls: list[str] = []

    async def docs(_: Request) -> Response:
        return JSONResponse(BENTOML_DOCS)

    async def price(request: Request) -> Response:
        calls.append(request.url.path)
        return JSONResponse({"total": 1.0})

    app = Starlette(routes=[Route("/docs.json", docs), Route("/price", price, methods=["POST"])])
    with TestClient(ApiDocsMiddleware(app, describe=lambda: API)) as client:
        answer = client.get("/docs.json")
        assert answer.status_code == 200
        assert int(answer.headers["content-length"]) == len(answer.content)
        assert json.loads(answer.content)["paths"].keys() == {"/readyz", "/price"}
        assert client.post("/price", json={}).json() == {"total": 1.0}
        assert client.get("/schema.json").status_code == 404  # an error is passed on as it is
    assert calls == ["/price"]
