"""The online scoring service: ``POST /score`` and ``POST /score_batch`` over Feast online features.

Run it with ``bentoml serve services.scorer.service:OnlineScorer`` from the repository root, or serve the bento
the ``build_service`` flow builds. The endpoints are a small Starlette app mounted on the BentoML service
(``@bentoml.asgi_app``): that halves BentoML's per-request cost (``@bentoml.api`` generates pydantic JSON
schemas per request) and keeps BentoML's probes, metrics and packaging. After start-up (``tune_interpreter``)
the heap is frozen and the collector's thresholds raised: full collections of the start-up objects otherwise
stall every in-flight request. The GIL switch interval drops from 5 ms to 0.5 ms: a background thread otherwise
holds the event loop for up to 5 ms at each switch. (Figures: docs/architecture.md, "Why it is built this
way".)

Errors are JSON ``{"error": ..., "details": [{"field": ..., "reason": ...}]}``: 400 for a body that is not
JSON, 422 for a request that breaks the schema, 413 for an oversized body or batch, 401 for a missing or
wrong ``X-API-Key`` (when API keys are configured: ``RTML_API_KEY``, ``RTML_API_KEYS``; see api_keys.py) and 503 (with ``Retry-After``) while the online store is
unreachable; the service recovers by itself when it is back. Readiness (``/readyz``) requires the model and
a reachable online store.

The endpoints, their request, response and error schemas (from the pydantic models) are in the service's
OpenAPI document at ``/docs.json`` and among the routes of ``/schema.json`` that BentoML's clients read
(``ApiDocsMiddleware``, services/scorer/openapi.py).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from typing import Any

import bentoml
import orjson
from pydantic import BaseModel, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from model_store import libraries
from services.scorer.api_keys import ApiKeys
from services.scorer.online_features import OnlineStoreUnavailable
from services.scorer.openapi import JSON, ApiDescription, ApiDocsMiddleware, ErrorCase, Operation
from services.scorer.settings import get_service_settings
from services.scorer.transaction import BATCH_TOO_LARGE, Transaction, TransactionBatch

logger = logging.getLogger(__name__)

# Bodies beyond these sizes are refused before they are read into memory.
MAX_SCORE_BYTES = 64 * 1024
MAX_BYTES_PER_TRANSACTION = 1024
# Generation-0 collections every 100k allocations instead of 700, and rare full ones: the live heap is
# frozen at start-up, so what a collection could free is the little each request leaves behind.
GC_THRESHOLDS = (100_000, 50, 1000)
# How long a thread that wants the GIL waits before the holder must give it up (CPython's default is 5 ms):
# a background thread's wake-up takes the event loop off the CPU for that long, which shows in /score's tail.
SWITCH_INTERVAL_SECONDS = 0.0005
API_KEY_HEADER = "X-API-Key"
RETRY_AFTER_SECONDS = 1


class ErrorDetail(BaseModel):
    """One thing wrong with a request: the field (a dotted path; ``body`` for the whole body) and why."""

    field: str
    reason: str


class ErrorBody(BaseModel):
    """The body of every error answer: what is wrong and, for a bad request, which fields and why."""

    error: str = Field(description="What is wrong, in a sentence.")
    details: list[ErrorDetail] = Field(
        default_factory=list, description="Each field at fault and why (400, 401, 413, 422); absent for 503."
    )


def error_response(
    status: int,
    message: str,
    details: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """A JSON error naming what is wrong (and, for input, which field and why)."""
    body: dict[str, Any] = {"error": message}
    if details:
        body["details"] = details
    return Response(orjson.dumps(body), status_code=status, media_type=JSON, headers=headers)


def invalid_request(error: ValidationError) -> Response:
    """400 for malformed JSON, 413 for an oversized batch, 422 for anything else the schema refuses."""
    problems = error.errors(include_url=False, include_input=False)
    details = [{"field": ".".join(str(p) for p in e["loc"]) or "body", "reason": e["msg"]} for e in problems]
    kinds = {e["type"] for e in problems}
    if "json_invalid" in kinds:
        return error_response(400, "request body is not valid JSON", details)
    if BATCH_TOO_LARGE in kinds:
        return error_response(413, "batch too large", details)
    return error_response(422, "invalid request", details)


def json_response(payload: Any) -> Response:
    return Response(orjson.dumps(payload), media_type=JSON)


def body_too_large(size: str | int, limit: int) -> Response:
    return error_response(
        413,
        f"request body of {size} bytes exceeds the limit of {limit} bytes",
        [{"field": "body", "reason": f"larger than {limit} bytes"}],
    )


async def read_body(request: Request, limit: int) -> bytes | Response:
    """The request body, or a 413 response when it is (or announces itself) larger than ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return body_too_large(declared, limit)
    body = await request.body()
    if len(body) > limit:
        return body_too_large(len(body), limit)
    return body


async def score(request: Request) -> Response:
    """Score one transaction."""
    service: OnlineScorer = bentoml.get_current_service()
    if (denied := service.authorize(request)) is not None:
        return denied
    body = await read_body(request, MAX_SCORE_BYTES)
    if isinstance(body, Response):
        return body
    try:
        transaction = Transaction.model_validate_json(body)
    except ValidationError as error:
        return invalid_request(error)
    explain = service.explain_count(request)
    if isinstance(explain, Response):
        return explain
    try:
        if explain:
            results = await service.scoring.score([transaction], explain=explain)
        else:
            # Concurrent single requests share Redis round trips and CatBoost calls (see CoalescingScorer).
            results = await service.coalescer.score([transaction])
    except OnlineStoreUnavailable as error:
        return service.unavailable(error)
    return json_response(results[0])


async def score_batch(request: Request) -> Response:
    """Score up to ``settings.max_batch_size`` transactions sent as ``{"transactions": [...]}``."""
    service: OnlineScorer = bentoml.get_current_service()
    if (denied := service.authorize(request)) is not None:
        return denied
    body = await read_body(request, MAX_SCORE_BYTES + service.max_batch_size * MAX_BYTES_PER_TRANSACTION)
    if isinstance(body, Response):
        return body
    try:
        batch = TransactionBatch.model_validate_json(body, context={"max_batch_size": service.max_batch_size})
    except ValidationError as error:
        return invalid_request(error)
    explain = service.explain_count(request)
    if isinstance(explain, Response):
        return explain
    try:
        results = await service.scoring.score(batch.transactions, explain=explain)
    except OnlineStoreUnavailable as error:
        return service.unavailable(error)
    return json_response({"results": results})


api = Starlette(
    routes=[
        Route("/score", score, methods=["POST"]),
        Route("/score_batch", score_batch, methods=["POST"]),
    ]
)


def tune_interpreter() -> tuple[tuple[int, int, int], float]:
    """Freeze the start-up heap, raise the collector's thresholds and shorten the GIL switch interval;
    returns the previous thresholds and interval."""
    previous = gc.get_threshold(), sys.getswitchinterval()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    return previous


# BentoML's configuration of the service (bench_service serves its floor with the same).
SERVICE_CONFIG: dict[str, Any] = {
    # One worker per core the process may use (BentoML reads the cgroup's CPU quota): one event loop is one
    # core, and at 32 connections one worker left the second core of a 2-core machine 40 % idle.
    "workers": "cpu_count",
    "traffic": {"timeout": 30},
    # Per-request access logs cost as much as the scoring itself; BentoML's request metrics stay on.
    "logging": {"access": {"enabled": False}},
    # OpenTelemetry's ASGI middleware costs a large share of a worker under load (spans are made even when none
    # is exported): the scoring endpoints skip it unless BentoML's configuration says otherwise
    # (docs/deployment.md, Observability).
    "tracing": {"excluded_urls": ["/score", "/score_batch"]},
}


@bentoml.service(name="online_scorer", **SERVICE_CONFIG)
@bentoml.asgi_app(api, path="/")
class OnlineScorer:
    """Scores card transactions with the registry's champion and Feast online features."""

    def __init__(self) -> None:
        libraries.typeguard.apply_patches()  # before Feast is imported (by open_feature_reader)
        from services.scorer.metrics import scorer_metrics
        from services.scorer.model import load_serving_model
        from services.scorer.online_features import RedisFeatureReader, open_feature_reader
        from services.scorer.rollout import ModelFollower
        from services.scorer.scoring import CoalescingScorer, DecisionPublisher, OnlineScoring

        settings = get_service_settings()
        self.max_batch_size = settings.max_batch_size
        self.max_explained = settings.max_explained_features
        self.api_keys = ApiKeys(settings.accepted_api_keys)
        # The bento's own copy of the champion: the service starts with it even when the registry is down, then
        # follows the registry's aliases (services/scorer/rollout.py).
        model = load_serving_model(settings, in_bento=OnlineScorer.bento is not None)
        if model.contract.feature_service != settings.feature_service:
            logger.warning(
                "model %s v%s was trained on feature service %r (settings name %r): serving the model's",
                model.name,
                model.version,
                model.contract.feature_service,
                settings.feature_service,
            )
        busy_wait = settings.redis_busy_wait_microseconds / 1e6
        reader = open_feature_reader(settings, model.contract.feature_service, busy_wait)
        metrics = scorer_metrics()
        metrics.set_model(model.name, model.version)
        publisher = None
        if not settings.publish_decisions:
            logger.warning(
                "decisions are not published (RTML_PUBLISH_DECISIONS=false): no decision record, no traffic log"
            )
        elif not isinstance(reader, RedisFeatureReader):
            logger.warning(
                "online store %r is not Redis: decisions are not recorded in a stream, the traffic log gets none",
                settings.online_store,
            )
        else:
            # The decision record lives on the online store's Redis, next to the features it was made with.
            publisher = DecisionPublisher(
                reader.client,
                settings.stream("transactions"),
                settings.stream_max_length,
                busy_wait=busy_wait,
            )
        self.scoring = OnlineScoring(
            reader, model, metrics, publisher, canary_share=settings.canary_share, baked=True
        )
        self.coalescer = CoalescingScorer(self.scoring)
        self.follower = (
            ModelFollower(self.scoring, settings, metrics) if settings.model_poll_seconds > 0 else None
        )
        self._tasks: list[asyncio.Task[None]] = []
        # Pay CatBoost's first-call costs now rather than on the first request.
        model.predict({name: [None] for name in model.features})
        self._interpreter_defaults: tuple[tuple[int, int, int], float] | None = None

    @bentoml.on_startup
    def tune_for_serving(self) -> None:
        """Runs once the service and its routes exist: everything alive now lives as long as the process."""
        self._interpreter_defaults = tune_interpreter()

    @bentoml.on_startup
    async def follow_the_registry(self) -> None:
        """Prepare the reason codes and start following the registry's aliases, in this worker's
        event loop (the preparation in a thread: the service is ready meanwhile)."""
        from services.scorer.explanations import prepare_explanations

        loop = asyncio.get_running_loop()
        self._tasks.append(
            loop.create_task(
                asyncio.to_thread(prepare_explanations, self.scoring.model, get_service_settings())
            )
        )
        if self.follower is not None:
            self._tasks.append(loop.create_task(self.follower.run()))

    @bentoml.on_shutdown
    async def close(self) -> None:
        """Stop following the registry, close connections (BentoML's shutdown
        hook); every answered decision is in the stream already."""
        for task in self._tasks:
            task.cancel()
        await self.scoring.reader.close()
        if self._interpreter_defaults is not None:
            thresholds, switch_interval = self._interpreter_defaults
            gc.unfreeze()
            gc.set_threshold(*thresholds)
            sys.setswitchinterval(switch_interval)
            self._interpreter_defaults = None

    async def __is_ready__(self) -> bool:
        """Ready when the model is loaded (it is, once constructed) and the online store answers."""
        return await self.scoring.reader.ping()

    @property
    def requires_api_key(self) -> bool:
        return self.api_keys.required

    def explain_count(self, request: Request) -> int | Response:
        """The ``explain`` query parameter: how many contributing features each answer lists (0: none)."""
        raw = request.query_params.get("explain")
        if raw is None:
            return 0
        if not raw.isdigit() or not 1 <= int(raw) <= self.max_explained:
            return error_response(
                422,
                "invalid request",
                [{"field": "explain", "reason": f"must be a whole number from 1 to {self.max_explained}"}],
            )
        return int(raw)

    def authorize(self, request: Request) -> Response | None:
        """None when the request may proceed; 401 when API keys are configured and none of them is presented."""
        if not self.api_keys.required:
            return None
        if not self.api_keys.accept(request.headers.get("x-api-key")):
            return error_response(
                401,
                "missing or invalid API key",
                [
                    {
                        "field": API_KEY_HEADER,
                        "reason": "header required and must match one of the service's keys",
                    }
                ],
                headers={"WWW-Authenticate": API_KEY_HEADER},
            )
        return None

    def unavailable(self, error: OnlineStoreUnavailable) -> Response:
        """503 while the online store (or the decision record on it) is down: what is down, and retry shortly."""
        logger.warning("answering 503: %s", error)
        return error_response(503, str(error), headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def describe_scoring_api() -> ApiDescription:
    """The scoring endpoints as the running service answers them: its batch limit, and 401 only when it has
    an API key."""
    from services.scorer.scoring import ScoreBatchResult, ScoreResult

    service: OnlineScorer = bentoml.get_current_service()
    common = {
        400: ErrorCase("The body is not JSON."),
        422: ErrorCase("The request breaks the schema: `details` names each field at fault and why."),
        503: ErrorCase(
            "The online feature store (or the decision record on it) is unreachable; the service recovers by "
            "itself when it is back.",
            headers={
                "Retry-After": {
                    "description": "Seconds to wait before retrying.",
                    "required": True,
                    "schema": {"type": "integer", "minimum": 0},
                }
            },
        ),
    }
    if service.requires_api_key:
        common[401] = ErrorCase(
            f"The {API_KEY_HEADER} header is missing or matches none of the service's keys.",
            headers={
                "WWW-Authenticate": {"description": "Names the header to send.", "schema": {"type": "string"}}
            },
        )
    batch_limit = MAX_SCORE_BYTES + service.max_batch_size * MAX_BYTES_PER_TRANSACTION
    explain = {
        "name": "explain",
        "in": "query",
        "required": False,
        "description": "List this many features that moved each score most, with their values and signed "
        "contributions (CatBoost's SHAP values, in log-odds), as `reasons`.",
        "schema": {"type": "integer", "minimum": 1, "maximum": service.max_explained},
    }
    return ApiDescription(
        service=OnlineScorer.name,
        operations=(
            Operation(
                "/score",
                "score",
                "Score one transaction.",
                Transaction,
                ScoreResult,
                {**common, 413: ErrorCase(f"The body is larger than {MAX_SCORE_BYTES} bytes.")},
                parameters=(explain,),
            ),
            Operation(
                "/score_batch",
                "score_batch",
                f"Score up to {service.max_batch_size} transactions in one call; results come in the order sent.",
                TransactionBatch,
                ScoreBatchResult,
                {
                    **common,
                    413: ErrorCase(
                        f"The batch holds more than {service.max_batch_size} transactions, or the body is "
                        f"larger than {batch_limit} bytes."
                    ),
                },
                parameters=(explain,),
            ),
        ),
        error=ErrorBody,
        api_key_header=API_KEY_HEADER if service.requires_api_key else None,
    )


# The mounted routes are invisible to BentoML's /docs.json and /schema.json: this adds them (public API).
OnlineScorer.add_asgi_middleware(ApiDocsMiddleware, describe=describe_scoring_api)
