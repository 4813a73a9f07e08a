"""The mounted scoring routes where clients look for endpoints: BentoML's ``/docs.json`` and ``/schema.json``.

BentoML 1.4 builds its OpenAPI document on every ``GET /docs.json`` (``Service.openapi_spec``): the probes and
``/metrics``, each ``@bentoml.api`` method, and the routes of mounted FastAPI apps (through FastAPI's own
``get_openapi``). Routes of any other mounted ASGI app, like the Starlette app that serves ``/score`` for speed,
are left out, and so they are from ``/schema.json``, where ``bentoml.SyncHTTPClient`` finds the endpoints it
turns into methods. A mounted FastAPI app would document only bodies that FastAPI parses itself, the per-request
work the Starlette app exists to avoid. So an ASGI middleware (``Service.add_asgi_middleware``, public API)
passes every other request straight through and adds our operations to the two documents once BentoML has
answered. Request and response schemas are generated from the pydantic models that validate and describe the
traffic, in the OpenAPI 3.0 dialect that BentoML's document declares.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)

JSON = "application/json"
REF_TEMPLATE = "#/components/schemas/{model}"
# The tag BentoML gives its own inference endpoints: ours are listed with them.
APP_TAG = "Service APIs"
API_KEY_SCHEME = "ApiKey"
# Keywords of JSON Schema 2020-12 that OpenAPI 3.0 has no form for and that ``openapi30`` does not translate.
UNSUPPORTED_IN_OPENAPI30 = frozenset({"$defs", "prefixItems", "dependentSchemas", "unevaluatedProperties"})


@dataclass(frozen=True)
class ErrorCase:
    """An error status of an operation: when it happens and the headers it carries (OpenAPI header objects)."""

    description: str
    headers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Operation:
    """A ``POST`` endpoint: its request and 200 response models, and its error statuses."""

    path: str
    name: str
    description: str
    request: type[BaseModel]
    response: type[BaseModel]
    errors: Mapping[int, ErrorCase]
    # OpenAPI parameter objects (query parameters, say).
    parameters: Sequence[Mapping[str, Any]] = ()


@dataclass(frozen=True)
class ApiDescription:
    """The mounted routes to document; every error answer has the body ``error``."""

    service: str
    operations: Sequence[Operation]
    error: type[BaseModel]
    # When set, the operations require this header (an OpenAPI apiKey security scheme).
    api_key_header: str | None = None


def openapi30(schema: Any) -> Any:
    """A pydantic (JSON Schema 2020-12) schema in the OpenAPI 3.0 dialect: numeric exclusive bounds take the
    boolean form, ``const`` becomes a one-value ``enum``, ``anyOf`` with ``null`` becomes ``nullable``."""
    if not isinstance(schema, dict):
        return schema
    if unsupported := UNSUPPORTED_IN_OPENAPI30.intersection(schema):
        raise ValueError(f"OpenAPI 3.0 has no form for {sorted(unsupported)} in {schema}: change the model")
    if schema.get("type") == "null" or isinstance(schema.get("type"), list):
        raise ValueError(f"OpenAPI 3.0 has no null type ({schema}): use an optional field (anyOf with null)")
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "const":
            out["enum"] = [value]
        elif key == "properties":
            out[key] = {name: openapi30(child) for name, child in value.items()}
        elif key in ("items", "additionalProperties", "not"):
            out[key] = openapi30(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            variants = [v for v in value if v != {"type": "null"}]
            if len(variants) < len(value):
                out["nullable"] = True
            if key == "anyOf" and len(variants) == 1:
                # A nullable X: 3.0 ignores siblings of $ref, so a reference stays wrapped.
                only = openapi30(variants[0])
                out.update({"allOf": [only]} if "$ref" in only else only)
            else:
                out[key] = [openapi30(v) for v in variants]
        else:
            out[key] = value  # annotations and values (title, default, enum ...) are not schemas
    return out


def openapi_fragment(api: ApiDescription) -> dict[str, Any]:
    """The ``paths`` and ``components`` that describe the operations, schemas generated from their models."""
    wanted: list[tuple[type[BaseModel], Literal["validation", "serialization"]]] = []
    for operation in api.operations:
        wanted += [(operation.request, "validation"), (operation.response, "serialization")]
    wanted.append((api.error, "serialization"))
    refs, top = models_json_schema(list(dict.fromkeys(wanted)), ref_template=REF_TEMPLATE)
    error_body = {JSON: {"schema": refs[(api.error, "serialization")]}}
    paths: dict[str, Any] = {}
    for operation in api.operations:
        responses: dict[str, Any] = {
            "200": {
                "description": "Successful Response",
                "content": {JSON: {"schema": refs[(operation.response, "serialization")]}},
            }
        }
        for status, case in sorted(operation.errors.items()):
            responses[str(status)] = {"description": case.description, "content": error_body}
            if case.headers:
                responses[str(status)]["headers"] = {
                    name: dict(header) for name, header in case.headers.items()
                }
        post: dict[str, Any] = {
            "tags": [APP_TAG],
            "operationId": f"{api.service}__{operation.name}",
            "description": operation.description,
            "requestBody": {
                "required": True,
                "content": {JSON: {"schema": refs[(operation.request, "validation")]}},
            },
            "responses": responses,
        }
        if operation.parameters:
            post["parameters"] = [dict(p) for p in operation.parameters]
        if api.api_key_header:
            post["security"] = [{API_KEY_SCHEME: []}]
        paths[operation.path] = {"post": post}
    components: dict[str, Any] = {
        "schemas": {name: openapi30(schema) for name, schema in top.get("$defs", {}).items()}
    }
    if api.api_key_header:
        components["securitySchemes"] = {
            API_KEY_SCHEME: {"type": "apiKey", "in": "header", "name": api.api_key_header}
        }
    return {"paths": paths, "components": components}


def add_to_openapi(document: dict[str, Any], api: ApiDescription) -> dict[str, Any]:
    """BentoML's OpenAPI document with the operations added (ours win for their own paths)."""
    fragment = openapi_fragment(api)
    components = dict(document.get("components") or {})
    for section, entries in fragment["components"].items():
        existing = dict(components.get(section) or {})
        for name, definition in entries.items():
            if name in existing and existing[name] != definition:
                raise ValueError(
                    f"components.{section}.{name} of the OpenAPI document is already defined otherwise"
                )
            existing[name] = definition
        components[section] = existing
    return {**document, "paths": {**document.get("paths", {}), **fragment["paths"]}, "components": components}


# Written for and checked against this version: /schema.json is BentoML's private server-client protocol.
BENTOML_CLIENT_SCHEMA_VERSION = "1.4.39"


def add_to_bentoml_client_schema(schema: dict[str, Any], api: ApiDescription) -> dict[str, Any]:
    """BentoML's ``/schema.json`` with the operations among its ``routes``, where ``bentoml.SyncHTTPClient``
    and ``AsyncHTTPClient`` find the endpoints they turn into methods (``client.score(**transaction)``).

    BentoML private API, written for bentoml 1.4.39: the route format of ``_bentoml_sdk.APIMethod.schema()``
    served by ``Service.schema()`` and read by ``_bentoml_impl.client.http.HTTPClient._setup``. With another
    installed version the schema is left as BentoML made it and a warning says so. Meant to move to
    ``model_store/libraries/bentoml.py`` with the project's other uses of BentoML internals.
    """
    installed = version("bentoml")
    if installed != BENTOML_CLIENT_SCHEMA_VERSION:
        logger.warning(
            "bentoml %s is installed and /schema.json's route format was checked against %s only: "
            "BentoML clients will not list %s; re-check services/scorer/openapi.py",
            installed,
            BENTOML_CLIENT_SCHEMA_VERSION,
            [operation.path for operation in api.operations],
        )
        return schema
    ours = {operation.path for operation in api.operations}
    routes = [route for route in schema.get("routes", []) if route.get("route") not in ours]
    for operation in api.operations:
        routes.append(
            {
                "name": operation.name,
                "route": operation.path,
                "description": operation.description,
                "batchable": False,
                "input": operation.request.model_json_schema(mode="validation"),
                "output": operation.response.model_json_schema(mode="serialization"),
                "is_task": False,
            }
        )
    return {**schema, "routes": routes}


class ApiDocsMiddleware:
    """Adds the mounted operations to BentoML's answers to ``GET /docs.json`` and ``GET /schema.json``.

    ``describe`` is called per document request: the description can follow the running service (its API
    key, its batch limit). Every other request goes straight to the app.
    """

    def __init__(
        self,
        app: ASGIApp,
        describe: Callable[[], ApiDescription],
        docs_path: str = "/docs.json",
        client_schema_path: str = "/schema.json",
    ) -> None:
        self.app = app
        self.describe = describe
        self.extend: dict[str, Callable[[dict[str, Any], ApiDescription], dict[str, Any]]] = {
            docs_path: add_to_openapi,
            client_schema_path: add_to_bentoml_client_schema,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.extend or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, capture)
        assert start is not None, f"no response to GET {scope['path']}"
        body = b"".join(chunks)
        headers = list(start.get("headers", []))
        if start["status"] == 200:
            extended = self.extend[scope["path"]](json.loads(body), self.describe())
            body = json.dumps(extended).encode()
            headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body})
