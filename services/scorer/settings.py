"""Settings of the scoring service: the platform's locations plus what only the service reads (``RTML_``)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from model_store.settings import Settings, cached_settings


class ServiceSettings(Settings):
    """What the scoring service reads, and nothing the flows need."""

    max_batch_size: int = Field(1000, gt=0, description="Largest list /score_batch accepts.")
    api_key: SecretStr | None = Field(
        None, description="One accepted key: when any key is set, requests must send one as X-API-Key."
    )
    # Comma-separated (``RTML_API_KEYS=new-key,old-key``): several keys at once let clients move to a new key
    # before the old one is removed. Keys hold no commas or surrounding spaces.
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="Accepted keys, comma-separated, in addition to api_key."
    )
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
    canary_share: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of customers (sticky by customer id) whose transactions the challenger decides.",
    )
    max_explained_features: int = Field(10, ge=1, le=100, description="Largest ?explain= a request may ask.")
    redis_busy_wait_microseconds: int = Field(
        200,
        ge=0,
        description="How long a worker keeps polling for Redis's answer (features, decision record) instead of "
        "letting its core sleep: CPU spent for latency (0: never). Only when it has nothing else to do.",
    )

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @property
    def accepted_api_keys(self) -> list[SecretStr]:
        """Every key a request may present: ``api_key`` and ``api_keys`` together."""
        return [*([self.api_key] if self.api_key else []), *self.api_keys]


@cached_settings
def get_service_settings() -> ServiceSettings:
    return ServiceSettings()
