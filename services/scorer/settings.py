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


@cached_settings
def get_service_settings() -> ServiceSettings:
    return ServiceSettings()
