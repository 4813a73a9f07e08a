"""Settings of the scoring service: the platform's locations plus what only the service reads (``RTML_``)."""

from __future__ import annotations

from pydantic import Field, SecretStr

from model_store.settings import Settings, cached_settings


class ServiceSettings(Settings):
    """What the scoring service reads, and nothing the flows need."""

    max_batch_size: int = Field(1000, gt=0, description="Largest list /score_batch accepts.")
    api_key: SecretStr | None = Field(None, description="When set, requests must send it as X-API-Key.")
    publish_decisions: bool = Field(
        True,
        description="Publish every decision to the transactions stream before answering: the decision record "
        "the traffic log, the landing zone and the window processor read. Off only to measure its cost.",
    )
    model_poll_seconds: float = Field(
        5.0,
        ge=0,
        description="How often each worker reads the registry's champion and challenger aliases (0: never; the "
        "bento's baked model serves). A moved alias decides requests within this plus the load (docs).",
    )
    shadow_share: float = Field(
        1.0,
        ge=0,
        le=1,
        description="Share of transactions the challenger scores in the shadow, off the request path.",
    )
    canary_share: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of customers (sticky by customer id) whose transactions the challenger decides.",
    )
    max_explained_features: int = Field(10, ge=1, le=100, description="Largest ?explain= a request may ask.")


@cached_settings
def get_service_settings() -> ServiceSettings:
    return ServiceSettings()
