"""Settings of the flows: the platform's locations plus what only the flows read (``RTML_`` variables)."""

from __future__ import annotations

from pydantic import Field, SecretStr

from model_store.settings import Settings, cached_settings


class FlowSettings(Settings):
    """What the Prefect flows read, and nothing the services need."""

    max_invalid_fraction: float = Field(
        0.05, ge=0, le=1, description="Share of bad rows that refuses a batch (the run goes on without it)."
    )
    # A raw file is read whole into memory: one of 1 GB would take several times that. 1M transactions are ~100 MB.
    max_raw_file_mb: float = Field(256, gt=0, description="Raw files larger than this are refused unread.")

    data_lock_wait_seconds: float = Field(
        3600,
        ge=0,
        description="How long a feature-pipeline run or a training set waits for another run's data lock.",
    )

    @property
    def max_raw_file_bytes(self) -> int:
        return int(self.max_raw_file_mb * 2**20)

    alert_webhook_url: SecretStr | None = Field(
        None, description="Drift/decay alerts are POSTed here as JSON."
    )


@cached_settings
def get_flow_settings() -> FlowSettings:
    return FlowSettings()
