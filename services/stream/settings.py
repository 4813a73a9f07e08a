"""Settings of the stream processes: the platform's locations plus how they consume, from ``RTML_`` variables."""

from __future__ import annotations

from pydantic import Field

from model_store.settings import Settings, cached_settings


class StreamSettings(Settings):
    """What the stream processes (window processor, landing writer, traffic log, stream scoring) read."""

    stream_partitions: int = Field(
        1,
        ge=1,
        le=1024,
        description="Window processor partitions: each entity belongs to one, each partition to one process "
        "(a lease); run at least this many processor processes.",
    )
    stream_batch_size: int = Field(
        1000, ge=1, le=100_000, description="Entries stream scoring reads and commits at once."
    )
    # Measured with a 200,000-event backlog: 22,400-23,300 events/s at 5,000 against 18,600-21,500 at 1,000 (a
    # hot merchant is written once per batch, not once per 1,000 events); the writes go in short Lua calls
    # whatever the size (docs/streaming.md, "Writes in short calls").
    processor_batch_size: int = Field(
        5000,
        ge=1,
        le=100_000,
        description="Entries the window processor reads at once when behind (its writes go as Lua calls of a "
        "few hundred entities each).",
    )
    stream_block_ms: int = Field(200, ge=1, description="How long a read waits for new entries.")
    stream_lease_seconds: float = Field(
        10.0, gt=0, description="A partition whose process stops renewing is taken over after this long."
    )
    # The default fits a processor's memory with room to spare (sizes: docs/streaming.md, "Bounded state").
    stream_cache_entities: int = Field(
        200_000,
        ge=1,
        description="Entities whose window state a processor keeps in memory (the rest in Redis).",
    )
    shadow_share: float = Field(
        1.0,
        ge=0,
        le=1,
        description="Share of decisions (by transaction id) the model that did not decide scores in the shadow.",
    )
    processor_pace_seconds: float = Field(
        0.02,
        ge=0,
        description="The window processor reads at most this often unless behind: at a few thousand events a "
        "second, batches of one event would cost a Lua call each; adds at most this to feature freshness.",
    )
    background_pace_seconds: float = Field(
        1.0,
        ge=0,
        description="The consumers nothing waits on (shadow scorer, traffic log, landing writer) read at most "
        "this often unless behind: fewer, larger batches beside the scoring service.",
    )
    # Measured: one read of 900 decisions (1.4 KB each) held Redis for 1.5 ms, and every request waiting on
    # Redis meanwhile paid it; reads of 100 cost about 0.2 ms each (docs/streaming.md, "Pacing").
    background_batch_size: int = Field(
        100,
        ge=1,
        le=100_000,
        description="Entries the consumers nothing waits on read and commit at once: Redis works in slices "
        "short enough not to hold up the scoring service's requests; behind, they read again at once.",
    )
    stream_health_port: int = Field(8081, ge=0, le=65535, description="/livez, /readyz, /metrics; 0 is off.")
    landing_flush_seconds: float = Field(
        60.0,
        gt=0,
        description="How often the landing writer turns the stream into raw files (sooner at 50,000 rows).",
    )
    traffic_flush_seconds: float = Field(
        300.0,
        gt=0,
        description="How often the traffic log writes its profiles and prediction log (sooner at 50,000 rows). "
        "Each write adds one file per hour it covers and the drift report reads them all.",
    )


@cached_settings
def get_stream_settings() -> StreamSettings:
    return StreamSettings()
