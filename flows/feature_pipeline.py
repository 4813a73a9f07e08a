"""Raw data to Feast: ingest and validate transactions and labels, compute features, write the offline store,
apply, materialize.

Only new raw files are processed (a manifest per table keyed by content hash), so re-running on the same
inputs changes nothing and a run with new data reads just the look-back it needs from earlier data. Labels
files are ingested after the run's transactions, so a label can name a transaction of the same run; their
labels reach the merchant risk snapshots of the next run with new transactions (snapshots follow the
transactions' time, and labels are read through ``iter_labels`` as of each snapshot).

No stage holds the whole history: transactions files are validated and stored a chunk at a time, and the
windowed features are computed per shard of entities (``flows/feature_store/sharding.py``), each shard a task
that reads its own events and writes its own offline files, at most ``parallel_shards`` at once on the flow's
task runner (threads here, processes on a Dask cluster). Only the newest row per entity comes back to be
materialized. Measurements and the choice of shards over a database's window functions: docs/scaling.md.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger, task
from pydantic import BaseModel, Field

from flows.feature_store.backfill import is_from_stream, publish_backfill, recent
from flows.feature_store.data_lock import data_lock
from flows.feature_store.definitions import apply_definitions
from flows.feature_store.ingestion import (
    RawBatch,
    RawFileError,
    find_new_batches,
    read_raw_chunks,
    read_raw_ids,
    read_raw_table,
    record_batch,
    refuse_batch,
)
from flows.feature_store.labels import LabelReader, validate_labels, write_validated_labels
from flows.feature_store.offline_store import (
    batch_files,
    max_timestamp,
    partition_batch,
    partition_files,
    remove_batch,
    replace_table,
    write_partitions,
)
from flows.feature_store.sharding import EventSources, read_shard, scatter_events, shard_count, shard_number
from flows.feature_store.validation import (
    BatchRejectedError,
    ChunkTally,
    as_lookup,
    check_invalid_share,
    find_id_conflicts,
    validate_batch,
    validate_chunks,
    write_quarantine,
)
from flows.feature_store.window_sql import compute_windows_sql
from flows.fraud_data.features import (
    compute_customer_profile,
    compute_merchant_profile,
    compute_merchant_risk,
    risk_snapshots,
)
from flows.fraud_data.schema import customers_schema, labels_schema, merchants_schema, transactions_schema
from flows.settings import get_flow_settings
from model_store import libraries
from model_store.atomic_files import write_atomically
from model_store.settings import Settings, redacted_url
from services.stream.windows import WindowedView, windowed_views


class FeaturePipelineParams(BaseModel):
    """What a run may override; everything else comes from settings."""

    max_invalid_fraction: float | None = Field(
        None, ge=0, le=1, description="Share of bad rows that fails a batch (default: settings)."
    )
    apply_feature_repo: bool = Field(True, description="Run `feast apply` before materializing.")
    chunk_rows: int = Field(
        1_000_000, gt=0, description="Rows of a transactions file validated and stored at a time."
    )
    shard_rows: int = Field(
        2_000_000, gt=0, description="Events per shard of the windowed features (history included)."
    )
    parallel_shards: int = Field(
        2, gt=0, description="Shards computed at once; each holds about shard_rows events in memory."
    )


@dataclass
class ReferenceTables:
    customers: pd.DataFrame
    merchants: pd.DataFrame
    changed: list[str] = field(default_factory=list)
    # Recorded in the manifest at the end of the run, so a run killed before recomputes their profiles.
    batches: list[tuple[RawBatch, dict]] = field(default_factory=list)


@dataclass
class IngestedBatches:
    """The run's new transactions batches, now in the validated store, and what the later stages need of them."""

    batches: list[RawBatch]
    summaries: dict[str, dict]
    rows: int = 0
    start: pd.Timestamp | None = None  # the earliest new event
    # The newest event of files that did not come from the stream: the window processor has not seen them.
    newest_from_files: pd.Timestamp | None = None


@task
def ingest_reference_tables(settings: Settings, max_invalid_fraction: float) -> ReferenceTables:
    """Validate customers and merchants when their files changed; otherwise reuse the validated copies."""
    manifest = settings.data_dir / "reference_manifest.json"
    new = {b.name: b for b in find_new_batches(settings.raw_dir, manifest)}
    tables: dict[str, pd.DataFrame] = {}
    done = []
    for name, schema, id_column in (
        ("customers", customers_schema, "customer_id"),
        ("merchants", merchants_schema, "merchant_id"),
    ):
        validated = settings.validated_dir / f"{name}.parquet"
        if name in new:
            frame = read_raw_table(new[name].path, schema)
            result = validate_batch(frame, schema, batch_name=name, id_column=id_column, now=_now())
            write_quarantine(result, settings.quarantine_dir, name)
            check_invalid_share(result, max_invalid_fraction)
            write_atomically(validated, lambda path, valid=result.valid: valid.to_parquet(path, index=False))
            done.append((new[name], {"rows": len(frame), "quarantined": len(result.quarantined)}))
        elif not validated.exists():
            raise FileNotFoundError(
                f"{settings.raw_dir / name}.parquet (or .csv) is missing: the pipeline needs the {name} table"
            )
        tables[name] = pd.read_parquet(validated)
    return ReferenceTables(tables["customers"], tables["merchants"], changed=sorted(new), batches=done)


@task
def ingest_transactions(
    settings: Settings, reference: ReferenceTables, max_invalid_fraction: float, chunk_rows: int = 1_000_000
) -> IngestedBatches:
    """Validate each new transactions file a chunk at a time; good rows join the validated store, bad ones go
    to quarantine.

    A file that cannot be read, or whose share of bad rows is too high, is refused (``refuse_batch``: its name and
    the reason under ``quarantine/refused/``), leaves nothing in the store, and the run goes on with the others.
    """
    manifest = settings.data_dir / "transactions_manifest.json"
    batches = find_new_batches(settings.raw_dir / "transactions", manifest)
    store = settings.validated_dir / "transactions"
    # Built once: every chunk of every batch looks its ids up in the same hash tables.
    references = {
        "customer_id": as_lookup(reference.customers["customer_id"]),
        "merchant_id": as_lookup(reference.merchants["merchant_id"]),
    }
    ingested = IngestedBatches([], {})
    for batch in batches:
        # A failed earlier attempt at this batch may have left files: they are not "ingested before".
        remove_batch(store, batch.name)
        tally = ChunkTally(batch.name)
        try:
            conflicts = find_id_conflicts(
                read_raw_ids(
                    batch.path, transactions_schema, "transaction_id", chunk_rows, settings.max_raw_file_bytes
                ),
                partition_files(store),
                "transaction_id",
            )
            results = validate_chunks(
                read_raw_chunks(batch.path, transactions_schema, chunk_rows, settings.max_raw_file_bytes),
                transactions_schema,
                conflicts=conflicts,
                id_column="transaction_id",
                batch_name=batch.name,
                references=references,
                timestamp_column="event_timestamp",
                now=_now(),
            )
            # The batch's first and newest event, counted only once the batch is accepted.
            first = newest = None
            for part, result in enumerate(results):
                write_partitions(result.valid, store, batch.name, part=part)
                tally.add(result)
                if len(result.valid):
                    times = result.valid["event_timestamp"]
                    first = min(times.min(), first or times.min())
                    newest = max(times.max(), newest or times.max())
            whole = tally.result()
            write_quarantine(whole, settings.quarantine_dir, batch.name)
            check_invalid_share(whole, max_invalid_fraction)
        except (RawFileError, BatchRejectedError) as refused:
            remove_batch(store, batch.name)
            refuse_batch(manifest, batch, str(refused), settings.quarantine_dir / "refused")
            continue
        except BaseException:
            remove_batch(store, batch.name)
            raise
        ingested.batches.append(batch)
        if first is not None:
            ingested.start = min(first, ingested.start or first)
            if not is_from_stream(batch.name):
                ingested.newest_from_files = max(newest, ingested.newest_from_files or newest)
        ingested.rows += tally.valid_rows
        ingested.summaries[batch.name] = {
            "rows": tally.rows,
            "valid": tally.valid_rows,
            "quarantined": len(whole.quarantined),
            "reasons": whole.reason_counts,
        }
    return ingested


@dataclass
class IngestedLabels:
    """The run's new labels files and how many valid labels they added to the validated labels table."""

    rows: int
    batches: list[RawBatch]
    summaries: dict[str, dict]


@task
def ingest_labels(settings: Settings, max_invalid_fraction: float) -> IngestedLabels:
    """Validate each new labels file against the labels and transactions validated so far (after this run's)."""
    logger = get_run_logger()
    manifest = settings.data_dir / "labels_manifest.json"
    batches = find_new_batches(settings.raw_dir / "labels", manifest)
    rows, summaries, accepted = 0, {}, []
    for batch in batches:
        try:
            raw = read_raw_table(batch.path, labels_schema, settings.max_raw_file_bytes)
            result = validate_labels(
                raw, labels_schema, validated_dir=settings.validated_dir, batch_name=batch.name, now=_now()
            )
            write_quarantine(result, settings.quarantine_dir / "labels", batch.name)
            check_invalid_share(result, max_invalid_fraction)
        except (RawFileError, BatchRejectedError) as refused:
            refuse_batch(manifest, batch, str(refused), settings.quarantine_dir / "labels" / "refused")
            continue
        accepted.append(batch)
        write_validated_labels(result.valid, settings.validated_dir, batch.name)
        rows += len(result.valid)
        summaries[batch.name] = {
            "rows": len(raw),
            "valid": len(result.valid),
            "quarantined": len(result.quarantined),
            "reasons": result.reason_counts,
        }
        logger.info(
            "labels %s: %d valid, %d quarantined", batch.name, len(result.valid), len(result.quarantined)
        )
    return IngestedLabels(rows, accepted, summaries)


@dataclass
class FeatureRows:
    """New rows per feature view: ``appended`` extend a table, ``replaced`` are a whole new snapshot of one."""

    appended: dict[str, pd.DataFrame] = field(default_factory=dict)
    replaced: dict[str, pd.DataFrame] = field(default_factory=dict)
    # Tables the shards wrote to the offline store themselves: only their newest row per entity, to materialize.
    newest: dict[str, pd.DataFrame] = field(default_factory=dict)

    def all(self) -> dict[str, pd.DataFrame]:
        return {**self.replaced, **self.appended, **self.newest}


@dataclass
class FeatureInputs:
    """What the feature computations of one run read: where its events are, and the known labels."""

    events: EventSources
    labels: LabelReader
    snapshots: pd.DatetimeIndex


@dataclass(frozen=True)
class WindowShard:
    """A shard's windowed rows, written to the offline store: how many, and the newest per entity."""

    rows: int
    newest: pd.DataFrame


@task
def read_window_definitions(settings: Settings) -> list[WindowedView]:
    """The feature views computed as windows over transactions, as declared in the applied Feast registry."""
    store = settings.feature_store()
    views = windowed_views(store.list_feature_views(allow_cache=False))
    if not views:
        raise LookupError(
            f"the Feast registry at {redacted_url(str(settings.feast_registry))} declares no windowed feature views: apply "
            f"{settings.feast_repo_path} first (the pipeline's apply_feature_repo parameter does)"
        )
    return views


@task
def load_feature_inputs(
    settings: Settings, ingested: IngestedBatches, lookback: pd.Timedelta, run_name: str
) -> FeatureInputs:
    """Find the new rows and the look-back they need, and the labels that had arrived by the data's "now" (read
    file by file by merchant risk, so no process holds them all).

    Risk snapshots start after the newest one of earlier runs: one written by this run's inputs before a crash
    never reached the online store, so it is made (and materialized) again.
    """
    validated = settings.validated_dir / "transactions"
    start = ingested.start
    order = {batch.name: i for i, batch in enumerate(ingested.batches)}
    # In ingestion order: rows that tie on entity and time then meet the windows as they would in one frame.
    new_files = sorted(
        batch_files(validated, frozenset(order)), key=lambda f: (order[partition_batch(f)], str(f))
    )
    history_files = [
        f for f in partition_files(validated, since=start - lookback) if partition_batch(f) not in order
    ]
    as_of = max_timestamp(validated)
    return FeatureInputs(
        events=EventSources(new_files, history_files, start - lookback, start),
        labels=LabelReader(settings.validated_dir, ("merchant_id",), known_by=as_of, need_ids=False),
        snapshots=risk_snapshots(
            start, as_of, max_timestamp(settings.offline_dir / "merchant_risk", skip_batches={run_name})
        ),
    )


@task
def compute_table(name: str, compute: Callable[..., pd.DataFrame], *args: object) -> pd.DataFrame:
    """One feature table; tables are independent, so the flow's task runner (threads, Dask) runs them in parallel."""
    frame = compute(*args)
    get_run_logger().info("computed %s: %d rows", name, len(frame))
    return frame


@task
def scatter_to_shards(
    settings: Settings, windows: list[WindowedView], events: EventSources, shard_rows: int, run_name: str
) -> dict[str, list[Path]]:
    """Split the run's events into shards of entities, one file per view and shard (see sharding)."""
    work = settings.data_dir / "shards" / run_name
    shutil.rmtree(work, ignore_errors=True)
    shards = shard_count(events.rows(), shard_rows)
    files = scatter_events(windows, events, shards, work)
    get_run_logger().info("split %d event files into %d shards per view", len(events.new_files), shards)
    return files


@task
def compute_window_shard(settings: Settings, view: WindowedView, path: Path, run_name: str) -> WindowShard:
    """One view's rows for one shard of entities, written to the offline store as that shard's own files."""
    new, history = read_shard(path)
    frame = compute_windows_sql(view, new, history)
    write_partitions(frame, settings.offline_dir / view.name, run_name, part=shard_number(path))
    # Rows come sorted by stamp: the last of each entity is its newest.
    return WindowShard(len(frame), frame.drop_duplicates(view.key, keep="last"))


def compute_windows_in_shards(
    settings: Settings,
    windows: list[WindowedView],
    events: EventSources,
    run_name: str,
    shard_rows: int,
    parallel_shards: int,
) -> dict[str, pd.DataFrame]:
    """Every view's windows, shard by shard on the task runner; returns the newest row per entity of each."""
    files = scatter_to_shards(settings, windows, events, shard_rows, run_name)
    for view in windows:
        remove_batch(settings.offline_dir / view.name, run_name)
    jobs = [(view, path) for view in windows for path in files[view.name]]
    futures = []
    for i, (view, path) in enumerate(jobs):
        # At most parallel_shards in flight: the runner may have more slots than memory has room for.
        if i >= parallel_shards:
            futures[i - parallel_shards].wait()
        futures.append(compute_window_shard.submit(settings, view, path, run_name))
    shards = [future.result() for future in futures]
    shutil.rmtree(settings.data_dir / "shards" / run_name, ignore_errors=True)
    newest = {}
    for view in windows:
        parts = [shard.newest for (v, _), shard in zip(jobs, shards, strict=True) if v is view]
        newest[view.name] = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    get_run_logger().info(
        "computed %s: %d rows in %d shards",
        ", ".join(v.name for v in windows),
        sum(s.rows for s in shards),
        len(jobs),
    )
    return newest


def compute_features(
    settings: Settings,
    reference: ReferenceTables,
    ingested: IngestedBatches,
    windows: list[WindowedView],
    run_name: str,
    shard_rows: int = 2_000_000,
    parallel_shards: int = 2,
) -> FeatureRows:
    """The feature computations of what is new: profiles of changed tables, windows and risk of new rows."""
    replaced, appended, newest = {}, {}, {}
    if "customers" in reference.changed:
        replaced["customer_profile"] = compute_table.submit(
            "customer_profile", compute_customer_profile, reference.customers
        )
    if "merchants" in reference.changed:
        replaced["merchant_profile"] = compute_table.submit(
            "merchant_profile", compute_merchant_profile, reference.merchants
        )
    if ingested.rows:
        lookback = max(view.horizon for view in windows)
        inputs = load_feature_inputs(settings, ingested, lookback, run_name)
        merchants = reference.merchants["merchant_id"].to_numpy()
        appended["merchant_risk"] = compute_table.submit(
            "merchant_risk", compute_merchant_risk, inputs.labels, merchants, inputs.snapshots
        )
        newest = compute_windows_in_shards(
            settings, windows, inputs.events, run_name, shard_rows, parallel_shards
        )
    return FeatureRows(
        appended={name: future.result() for name, future in appended.items()},
        replaced={name: future.result() for name, future in replaced.items()},
        newest=newest,
    )


@task
def write_offline_store(settings: Settings, rows: FeatureRows, run_name: str) -> int:
    """Write the feature rows to Feast's offline store (partitioned Parquet, one folder per feature view)."""
    files = 0
    for name, frame in rows.replaced.items():
        files += len(replace_table(frame, settings.offline_dir / name, name, period="year"))
    for name, frame in rows.appended.items():
        files += len(write_partitions(frame, settings.offline_dir / name, run_name))
    return files


@task(retries=2, retry_delay_seconds=5)
def apply_feature_repo(settings: Settings) -> None:
    output = apply_definitions(settings)
    if output is None:
        get_run_logger().info(
            "feast apply skipped: %s unchanged since the last apply", settings.feast_repo_path
        )
    else:
        get_run_logger().info("feast apply: %s", output)


@task(retries=3, retry_delay_seconds=[2, 10, 30])
def materialize_online(settings: Settings, tables: dict[str, pd.DataFrame]) -> dict[str, float]:
    """Write the newest feature rows per entity into the online store; retried while Redis is unreachable."""
    import redis

    from flows.feature_store.materialize import materialize_frames

    store = settings.feature_store()
    try:
        results = materialize_frames(store, tables, end=_now())
    except redis.ConnectionError as exc:
        raise ConnectionError(
            f"Redis at {redacted_url(settings.redis_url)} is unreachable ({exc}); start it, or set RTML_ONLINE_STORE=sqlite"
        ) from exc
    return {r.feature_view: r.entities_written for r in results}


@task(retries=3, retry_delay_seconds=[2, 10, 30])
def publish_recent_history(settings: Settings, ingested: IngestedBatches, windows: list[WindowedView]) -> int:
    """Publish what the window processor needs of the transactions that came from files (see backfill)."""
    if settings.online_store != "redis" or ingested.newest_from_files is None:
        return 0
    horizon = max(view.horizon for view in windows)
    from_files = {b.name for b in ingested.batches if not is_from_stream(b.name)}
    since = ingested.newest_from_files - horizon
    files = [
        f
        for f in partition_files(settings.validated_dir / "transactions", since=since)
        if partition_batch(f) in from_files
    ]
    if not files:
        return 0
    frame = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    published = publish_backfill(settings, recent(frame, horizon))
    get_run_logger().info(
        "published %d transactions of the last %s to %s", published, horizon, settings.stream("transactions")
    )
    return published


@task
def record_ingested(
    settings: Settings, reference: ReferenceTables, ingested: IngestedBatches, labels: IngestedLabels
) -> None:
    """Mark the batches done only now, so a failed (or killed) run retries them."""
    for batch, summary in reference.batches:
        record_batch(settings.data_dir / "reference_manifest.json", batch, summary)
    for manifest, done in (("transactions_manifest.json", ingested), ("labels_manifest.json", labels)):
        for batch in done.batches:
            record_batch(settings.data_dir / manifest, batch, done.summaries[batch.name])


@flow(name="feature_pipeline", log_prints=True)
def feature_pipeline(params: FeaturePipelineParams | None = None) -> dict[str, int]:
    """Ingest and validate raw data, compute features, write the offline store and materialize to the online store."""
    libraries.typeguard.apply_patches()
    params = params or FeaturePipelineParams()
    settings = get_flow_settings()
    max_invalid = (
        settings.max_invalid_fraction if params.max_invalid_fraction is None else params.max_invalid_fraction
    )
    # One run at a time writes the data folders; another waits for it (flows/feature_store/data_lock.py).
    with data_lock(
        settings.data_dir, "feature_pipeline", True, settings.data_lock_wait_seconds, get_run_logger()
    ):
        # Applying the definitions needs no data, so its fresh interpreter starts while the data is ingested.
        applied = apply_feature_repo.submit(settings) if params.apply_feature_repo else None
        reference = ingest_reference_tables(settings, max_invalid)
        ingested = ingest_transactions(settings, reference, max_invalid, params.chunk_rows)
        labels = ingest_labels(settings, max_invalid)
        windows = read_window_definitions(settings, wait_for=[applied] if applied is not None else None)
        run_name = _run_name(ingested, reference)
        rows = compute_features(
            settings, reference, ingested, windows, run_name, params.shard_rows, params.parallel_shards
        )
        write_offline_store(settings, rows, run_name)
        written = materialize_online(settings, rows.all())
        publish_recent_history(settings, ingested, windows)
        record_ingested(settings, reference, ingested, labels)
    return {"transactions": ingested.rows, "labels": labels.rows, **written}


def _run_name(ingested: IngestedBatches, reference: ReferenceTables) -> str:
    """Files written by a run are named after its inputs, so re-running the same inputs overwrites them."""
    names = [b.name for b in ingested.batches] or reference.changed or ["empty"]
    return names[0] if len(names) == 1 else f"{names[0]}..{names[-1]}"


def _now() -> pd.Timestamp:
    return pd.Timestamp(datetime.now(UTC))


if __name__ == "__main__":
    print(feature_pipeline())
