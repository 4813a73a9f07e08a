"""Settings of the flows: the platform's locations plus what only the flows read (``RTML_`` variables)."""

from __future__ import annotations

from pydantic import Field, SecretStr

from model_store.settings import Settings, cached_settings


class FlowSettings(Settings):
    """What the Prefect flows read, and nothing the services need."""

    max_invalid_fraction: float = Field(
        0.05, ge=0, le=1, description="Share of bad rows that refuses a batch (the run goes on without it)."
    )
    # Transactions files are read a chunk at a time, so size costs time, not memory; the cap catches a file that
    # is a mistake (a dump, a runaway export) before a run spends an hour on it. 10M transactions are ~340 MB.
    max_raw_file_mb: float = Field(2048, gt=0, description="Raw files larger than this are refused unread.")

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
