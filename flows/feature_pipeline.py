"""Raw data to Feast: ingest and validate transactions and labels, compute features, write the offline store,
apply, materialize.

Only new raw files are processed (a manifest per table keyed by content hash), so re-running on the same
inputs changes nothing and a run with new data reads just the look-back it needs from earlier data. Labels
files are ingested after the run's transactions, so a label can name a transaction of the same run; their
labels reach the merchant risk snapshots of the next run with new transactions (snapshots follow the
transactions' time, and labels are read through ``read_labels`` as of each snapshot).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

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
    read_raw_table,
    record_batch,
    refuse_batch,
)
from flows.feature_store.labels import read_labels, validate_labels, write_validated_labels
from flows.feature_store.offline_store import (
    max_timestamp,
    read_partitions,
    replace_table,
    write_partitions,
)
from flows.feature_store.validation import (
    BatchRejectedError,
    check_invalid_share,
    validate_batch,
    write_quarantine,
)
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
from services.stream.windows import WindowedView, compute_windows, windowed_views


class FeaturePipelineParams(BaseModel):
    """What a run may override; everything else comes from settings."""

    max_invalid_fraction: float | None = Field(
        None, ge=0, le=1, description="Share of bad rows that fails a batch (default: settings)."
    )
    apply_feature_repo: bool = Field(True, description="Run `feast apply` before materializing.")


@dataclass
class ReferenceTables:
    customers: pd.DataFrame
    merchants: pd.DataFrame
    changed: list[str] = field(default_factory=list)
    # Recorded in the manifest at the end of the run, so a run killed before recomputes their profiles.
    batches: list[tuple[RawBatch, dict]] = field(default_factory=list)


@dataclass
class IngestedBatches:
    transactions: pd.DataFrame
    batches: list[RawBatch]
    summaries: dict[str, dict]
    # Rows of files that did not come from the stream: the window processor has not seen them.
    from_files: pd.DataFrame = field(default_factory=pd.DataFrame)


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
    settings: Settings, reference: ReferenceTables, max_invalid_fraction: float
) -> IngestedBatches:
    """Validate each new transactions file; good rows join the validated store, bad ones go to quarantine.

    A file that cannot be read, or whose share of bad rows is too high, is refused (``refuse_batch``: its name and
    the reason under ``quarantine/refused/``) and the run goes on with the other batches.
    """
    manifest = settings.data_dir / "transactions_manifest.json"
    batches = find_new_batches(settings.raw_dir / "transactions", manifest)
    store = settings.validated_dir / "transactions"
    # Ids of earlier batches: a batch run again after a crash must not take its own rows for duplicates.
    retried = {batch.name for batch in batches}
    known_ids = (
        set(read_partitions(store, columns=["transaction_id"], skip_batches=retried)["transaction_id"])
        if batches
        else set()
    )
    references = {
        "customer_id": set(reference.customers["customer_id"]),
        "merchant_id": set(reference.merchants["merchant_id"]),
    }
    frames, file_frames, summaries, accepted = [], [], {}, []
    for batch in batches:
        try:
            raw = read_raw_table(batch.path, transactions_schema, settings.max_raw_file_bytes)
            result = validate_batch(
                raw,
                transactions_schema,
                batch_name=batch.name,
                known_ids=known_ids,
                id_column="transaction_id",
                references=references,
                timestamp_column="event_timestamp",
                now=_now(),
            )
            write_quarantine(result, settings.quarantine_dir, batch.name)
            check_invalid_share(result, max_invalid_fraction)
        except (RawFileError, BatchRejectedError) as refused:
            refuse_batch(manifest, batch, str(refused), settings.quarantine_dir / "refused")
            continue
        accepted.append(batch)
        write_partitions(result.valid, store, batch.name)
        known_ids.update(result.valid["transaction_id"])
        frames.append(result.valid)
        if not is_from_stream(batch.name):
            file_frames.append(result.valid)
        summaries[batch.name] = {
            "rows": len(raw),
            "valid": len(result.valid),
            "quarantined": len(result.quarantined),
            "reasons": result.reason_counts,
        }
    transactions = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    from_files = pd.concat(file_frames, ignore_index=True) if file_frames else pd.DataFrame()
    return IngestedBatches(transactions, accepted, summaries, from_files)


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

    def all(self) -> dict[str, pd.DataFrame]:
        return {**self.replaced, **self.appended}


@dataclass
class FeatureInputs:
    """What the feature computations of one run read: new rows, their look-back, and the known labels."""

    transactions: pd.DataFrame
    history: pd.DataFrame
    labels: pd.DataFrame
    snapshots: pd.DatetimeIndex


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
    """Read only the look-back the new rows need, and the labels that had arrived by the data's own "now".

    Risk snapshots start after the newest one of earlier runs: one written by this run's inputs before a crash
    never reached the online store, so it is made (and materialized) again.
    """
    new = ingested.transactions
    validated = settings.validated_dir / "transactions"
    start = new["event_timestamp"].min()
    history = read_partitions(validated, since=start - lookback)
    as_of = max_timestamp(validated)
    return FeatureInputs(
        transactions=new,
        history=history[history["event_timestamp"] < start],
        labels=read_labels(settings.validated_dir, columns=["merchant_id"], known_by=as_of),
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


def compute_features(
    settings: Settings,
    reference: ReferenceTables,
    ingested: IngestedBatches,
    windows: list[WindowedView],
) -> FeatureRows:
    """Submit the feature computations of what is new: profiles of changed tables, windows and risk of new rows."""
    replaced, appended = {}, {}
    if "customers" in reference.changed:
        replaced["customer_profile"] = compute_table.submit(
            "customer_profile", compute_customer_profile, reference.customers
        )
    if "merchants" in reference.changed:
        replaced["merchant_profile"] = compute_table.submit(
            "merchant_profile", compute_merchant_profile, reference.merchants
        )
    if not ingested.transactions.empty:
        lookback = max(view.horizon for view in windows)
        inputs = load_feature_inputs(settings, ingested, lookback, _run_name(ingested, reference))
        for view in windows:
            appended[view.name] = compute_table.submit(
                view.name, compute_windows, view, inputs.transactions, inputs.history
            )
        merchants = reference.merchants["merchant_id"].to_numpy()
        appended["merchant_risk"] = compute_table.submit(
            "merchant_risk", compute_merchant_risk, inputs.labels, merchants, inputs.snapshots
        )
    return FeatureRows(
        appended={name: future.result() for name, future in appended.items()},
        replaced={name: future.result() for name, future in replaced.items()},
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
    if settings.online_store != "redis" or ingested.from_files.empty:
        return 0
    horizon = max(view.horizon for view in windows)
    published = publish_backfill(settings, recent(ingested.from_files, horizon))
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
        ingested = ingest_transactions(settings, reference, max_invalid)
        labels = ingest_labels(settings, max_invalid)
        windows = read_window_definitions(settings, wait_for=[applied] if applied is not None else None)
        rows = compute_features(settings, reference, ingested, windows)
        write_offline_store(settings, rows, _run_name(ingested, reference))
        written = materialize_online(settings, rows.all())
        publish_recent_history(settings, ingested, windows)
        record_ingested(settings, reference, ingested, labels)
    return {"transactions": len(ingested.transactions), "labels": labels.rows, **written}


def _run_name(ingested: IngestedBatches, reference: ReferenceTables) -> str:
    """Files written by a run are named after its inputs, so re-running the same inputs overwrites them."""
    names = [b.name for b in ingested.batches] or reference.changed or ["empty"]
    return names[0] if len(names) == 1 else f"{names[0]}..{names[-1]}"


def _now() -> pd.Timestamp:
    return pd.Timestamp(datetime.now(UTC))


if __name__ == "__main__":
    print(feature_pipeline())
