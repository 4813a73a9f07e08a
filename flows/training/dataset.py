"""Point-in-time training sets: labeled transactions joined to Feast features as of each transaction's time.

The feature list comes from the FeatureService (never a list kept here); the categorical features are its
string-typed ones. Rows whose label had not arrived by the cut-off are left out, and the set is split by time
into train, validation and a test holdout.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from flows.feature_store.ingestion import hash_file
from flows.feature_store.labels import iter_labels, labels_dir, read_labels
from flows.feature_store.offline_store import max_timestamp, partition_files, table_columns
from model_store.settings import Settings

if TYPE_CHECKING:
    from feast import FeatureStore

logger = logging.getLogger(__name__)

LABEL = "is_fraud"
ORACLE = "oracle_probability"
TIMESTAMP = "event_timestamp"
ENTITY_COLUMNS = ("transaction_id", "customer_id", "merchant_id", TIMESTAMP)
# Fields the on-demand view takes from the request; training supplies them from the transaction itself.
REQUEST_COLUMNS = ("amount", "channel", "transaction_unix")
SLICE_COLUMNS = ("channel", "merchant_category")
WEIGHT = "sample_weight"
# Entity rows per point-in-time join: bounds the offline store's memory whatever the training set's size.
JOIN_ROWS = 500_000
# What Feast's DuckDB offline store may hold before it spills to disk. DuckDB's own default is 80 % of the
# machine: a join against 100 M offline rows reached 14 GB with it.
OFFLINE_STORE_MEMORY = "4GB"


@dataclass(frozen=True)
class FeatureSpec:
    """What the model reads, as declared by one Feast FeatureService."""

    feature_service: str
    features: list[str]
    categorical_features: list[str]
    feature_refs: list[str]


@dataclass(frozen=True)
class TimeSplit:
    """Boundaries of a split by time: train < validation_start <= validation < test_start <= test <= end."""

    start: pd.Timestamp
    validation_start: pd.Timestamp
    test_start: pd.Timestamp
    end: pd.Timestamp

    def as_params(self) -> dict[str, str]:
        return {f"split.{k}": v.isoformat() for k, v in vars(self).items()}


@dataclass
class TrainingSet:
    """Features and labels split by time, with what produced them."""

    spec: FeatureSpec
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    split: TimeSplit
    cutoff: pd.Timestamp
    lineage: dict[str, Any] = field(default_factory=dict)

    def parts(self) -> dict[str, pd.DataFrame]:
        return {"train": self.train, "validation": self.validation, "test": self.test}

    @property
    def has_oracle(self) -> bool:
        return ORACLE in self.test.columns and bool(self.test[ORACLE].notna().all())


def open_feature_store(settings: Settings) -> FeatureStore:
    """The Feast store, with Feast's MLflow integration on so retrievals are recorded on the active run.

    The integration tags the run with the FeatureService and feature refs, and lets
    ``store.mlflow.resolve_features(model_uri)`` map a registered model back to its service. When
    ``feature_store.yaml`` declares no ``mlflow:`` block we enable it for this store only.
    """
    store = settings.feature_store()
    bound_offline_store_memory(OFFLINE_STORE_MEMORY)
    if store.config.mlflow is None:
        store.config.mlflow_config = {"enabled": True, "tracking_uri": settings.mlflow_tracking_uri}
    return store


def bound_offline_store_memory(limit: str) -> None:
    """Give Feast's DuckDB offline store a memory limit, past which DuckDB spills to the temporary folder.

    The store runs its joins on ibis' default backend, a DuckDB connection of the process: this makes that
    default one connection with ``limit``, opened once per process.
    """
    import ibis

    ibis.set_backend(_bounded_duckdb(limit))


@cache
def _bounded_duckdb(limit: str) -> Any:
    import ibis

    spill = Path(tempfile.gettempdir()) / "rtml-duckdb"
    return ibis.duckdb.connect(memory_limit=limit, temp_directory=str(spill))


def read_feature_spec(store: FeatureStore, service_name: str) -> FeatureSpec:
    """The model's features, in the FeatureService's order, with the string-typed ones as categorical."""
    from feast.errors import FeastObjectNotFoundException
    from feast.types import String

    try:
        service = store.get_feature_service(service_name)
    except FeastObjectNotFoundException as error:
        raise LookupError(
            f"{error}: run the feature pipeline (it applies the Feast definitions) or fix the feature service name"
        ) from error
    features: list[str] = []
    categorical: list[str] = []
    refs: list[str] = []
    for projection in service.feature_view_projections:
        for feature in projection.features:
            if feature.name in features:
                raise ValueError(
                    f"feature {feature.name!r} appears twice in FeatureService {service_name!r}; "
                    "names must be unique for the model to read them"
                )
            features.append(feature.name)
            refs.append(f"{projection.name_to_use()}:{feature.name}")
            if feature.dtype == String:
                categorical.append(feature.name)
    return FeatureSpec(service_name, features, categorical, refs)


def read_labeled_transactions(
    validated_dir: Path,
    cutoff: datetime | None = None,
    label_maturity: pd.Timedelta | None = None,
    columns: Sequence[str] | None = None,
    each: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
) -> tuple[pd.DataFrame, pd.Timestamp, list[Path]]:
    """Validated transactions whose label had arrived by ``cutoff`` (default: the newest transaction's time).

    Labels are read with ``iter_labels``: inline in the transaction or from the labels table. Fraud is reported
    later than legitimate use (chargebacks take weeks), so the newest transactions are labeled mostly when
    legitimate. ``label_maturity`` leaves out transactions younger than that at the cut-off, trading recent rows
    for a less skewed fraud rate. ``columns`` (default: keys, time, the request fields and the oracle) are read
    file by file and ``each`` (a sample, say) is applied to each file's rows, so only what it keeps is ever
    held. Returns the rows in time order, the cut-off, and the files read (transactions, then labels).
    """
    transactions_dir = validated_dir / "transactions"
    files = partition_files(transactions_dir)
    if not files:
        raise FileNotFoundError(
            f"no validated transactions under {transactions_dir}: run the feature pipeline first"
        )
    if columns is None:
        columns = [*ENTITY_COLUMNS, "amount", "channel"]
        if ORACLE in table_columns(transactions_dir):
            columns.append(ORACLE)
    cut = pd.Timestamp(cutoff) if cutoff is not None else max_timestamp(transactions_dir)
    if cut.tzinfo is None:
        cut = cut.tz_localize("UTC")
    newest = cut - (label_maturity or pd.Timedelta(0))
    need_ids = "transaction_id" in columns
    parts, labeled_rows = [], 0
    for labeled in iter_labels(validated_dir, columns=columns, known_by=cut, need_ids=need_ids):
        labeled = labeled.loc[labeled[TIMESTAMP] <= newest]
        labeled_rows += len(labeled)
        parts.append(each(labeled) if each is not None else labeled)
    if not parts:
        empty = read_labels(validated_dir, columns, need_ids=need_ids)
        parts = [each(empty) if each is not None else empty]
    frame = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    rows = sum(pq.read_metadata(f).num_rows for f in files)
    logger.info("%d of %d transactions have a label by %s, %d kept", labeled_rows, rows, cut, len(frame))
    order = [TIMESTAMP, "transaction_id"] if need_ids else [TIMESTAMP]
    return (
        frame.sort_values(order, kind="stable").reset_index(drop=True),
        cut,
        files + partition_files(labels_dir(validated_dir)),
    )


def drop_burn_in(transactions: pd.DataFrame, burn_in_days: float) -> pd.DataFrame:
    """Leave out the first ``burn_in_days`` of history, where windowed features are cut short by its start.

    A 7-day count on the history's second day covers one day, and every customer's first transaction has no
    activity at all: rows live traffic never looks like, which also read as drift in missing values later.
    """
    if not burn_in_days:
        return transactions
    start = transactions[TIMESTAMP].min() + pd.Timedelta(days=burn_in_days)
    kept = transactions.loc[transactions[TIMESTAMP] >= start].reset_index(drop=True)
    if kept.empty:
        raise ValueError(
            f"burn_in_days={burn_in_days} leaves no labeled transaction: the history starts "
            f"{transactions[TIMESTAMP].min()} and ends {transactions[TIMESTAMP].max()}"
        )
    logger.info("burn-in: %d of %d labeled transactions from %s on", len(kept), len(transactions), start)
    return kept


def entity_frame(transactions: pd.DataFrame) -> pd.DataFrame:
    """Feast's entity dataframe: keys, the transaction's time, and the request fields of the on-demand view."""
    entities = transactions.loc[:, [*ENTITY_COLUMNS, "amount", "channel"]].copy()
    entities[TIMESTAMP] = entities[TIMESTAMP].astype("datetime64[us, UTC]")
    entities["transaction_unix"] = entities[TIMESTAMP].astype("int64") // 1_000_000
    entities["amount"] = entities["amount"].astype("float64")
    entities["channel"] = entities["channel"].astype(object)
    return entities


def retrieve_features(
    store: FeatureStore, spec: FeatureSpec, entities: pd.DataFrame, batch_rows: int = JOIN_ROWS
) -> pd.DataFrame:
    """Each entity row joined to the service's features as they were at its ``event_timestamp``.

    The join runs on at most ``batch_rows`` entity rows at a time, in time order: a row's point-in-time values
    do not depend on the other rows, and the offline store's join holds its whole entity frame and result.
    """
    service = store.get_feature_service(spec.feature_service)
    ordered = entities.sort_values(TIMESTAMP, kind="stable")
    parts = [
        store.get_historical_features(
            entity_df=ordered.iloc[begin : begin + batch_rows], features=service, full_feature_names=False
        ).to_df()
        for begin in range(0, max(len(ordered), 1), batch_rows)
    ]
    frame = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    # A request field the on-demand view passes through (``channel``) comes back twice; the copies are equal.
    frame = frame.loc[:, ~frame.columns.duplicated()].copy()
    missing = [name for name in spec.features if name not in frame.columns]
    if missing:
        raise ValueError(f"Feast returned no column for feature(s) {missing} of {spec.feature_service!r}")
    frame[TIMESTAMP] = pd.to_datetime(frame[TIMESTAMP], utc=True)
    return frame.sort_values([TIMESTAMP, "transaction_id"], kind="stable").reset_index(drop=True)


def time_split(times: pd.Series, validation_fraction: float, test_fraction: float) -> TimeSplit:
    """Boundaries that put the newest ``test_fraction`` of ``times`` in the holdout and the ``validation_fraction``
    before it in validation. Boundaries fall on timestamps, so rows sharing a timestamp stay on one side."""
    return split_sizes(times, validation_fraction, test_fraction)[0]


def split_sizes(
    times: pd.Series, validation_fraction: float, test_fraction: float
) -> tuple[TimeSplit, dict[str, int]]:
    """``time_split`` and how many of ``times`` each part holds (``split_frame``'s lengths), from one sort: a
    history's times go through it whole, and ``split_frame`` would copy them once per part."""
    if (
        not 0 < validation_fraction < 1
        or not 0 < test_fraction < 1
        or validation_fraction + test_fraction >= 1
    ):
        raise ValueError(
            f"validation_fraction={validation_fraction} and test_fraction={test_fraction} must be in (0, 1) "
            "and leave rows for training"
        )
    index = pd.DatetimeIndex(times)
    ordered = np.sort(index.asi8)
    n = len(ordered)
    positions = [0, int(n * (1 - validation_fraction - test_fraction)), int(n * (1 - test_fraction)), n - 1]
    picked = ordered[positions]
    # A boundary's first row: rows sharing its timestamp all fall on its side.
    _, validation_at, test_at, _ = np.searchsorted(ordered, picked, side="left")
    sizes = {
        "train": int(validation_at),
        "validation": int(test_at - validation_at),
        "test": int(n - test_at),
    }
    return TimeSplit(*pd.to_datetime(picked, unit=index.unit, utc=True)), sizes


def split_frame(frame: pd.DataFrame, split: TimeSplit) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Train, validation and test rows of ``frame`` by ``split``; rows outside ``[start, end]`` are in none."""
    times = frame[TIMESTAMP]
    return (
        frame.loc[(times >= split.start) & (times < split.validation_start)].reset_index(drop=True),
        frame.loc[(times >= split.validation_start) & (times < split.test_start)].reset_index(drop=True),
        frame.loc[(times >= split.test_start) & (times <= split.end)].reset_index(drop=True),
    )


def require_both_classes(parts: Iterable[pd.DataFrame], labeled: int) -> None:
    """Stop with the split that lacks a class: no model can be fit, early-stopped or evaluated on it."""
    for part, rows in zip(("train", "validation", "test"), parts, strict=True):
        if rows.empty or rows[LABEL].nunique() < 2:
            raise ValueError(
                f"the {part} split ({len(rows)} rows) needs both classes: too few labeled transactions "
                f"({labeled}) or fractions too small"
            )


def split_by_time(
    frame: pd.DataFrame, validation_fraction: float, test_fraction: float
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, TimeSplit]:
    """Train, validation and test by time: the newest ``test_fraction`` of rows is the holdout."""
    split = time_split(frame[TIMESTAMP], validation_fraction, test_fraction)
    train, validation, test = split_frame(frame, split)
    require_both_classes((train, validation, test), len(frame))
    return train, validation, test, split


def file_digests(files: Iterable[Path], root: Path) -> list[dict[str, Any]]:
    """Path (relative to ``root``), size and SHA-256 of each file, in path order."""
    return [
        {"path": str(path.relative_to(root)), "bytes": path.stat().st_size, "sha256": hash_file(path)}
        for path in sorted(files)
    ]


def combined_digest(digests: Iterable[dict[str, Any]]) -> str:
    """One hash over many files' hashes: equal exactly when the same files hold the same bytes."""
    digest = hashlib.sha256()
    for item in digests:
        digest.update(f"{item['path']}\0{item['sha256']}\n".encode())
    return digest.hexdigest()


def frame_digest(frame: pd.DataFrame) -> str:
    """A hash of a frame's values and column names, to tell two training sets apart."""
    values = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    return hashlib.sha256(values.tobytes() + ",".join(frame.columns).encode()).hexdigest()


def describe_lineage(
    settings: Settings, spec: FeatureSpec, source_files: list[Path], store: FeatureStore
) -> dict[str, Any]:
    """Where the training set came from: source files (transactions, labels) with content hashes, and the
    feature definitions."""
    views = sorted({ref.split(":")[0] for ref in spec.feature_refs})
    offline_files: list[Path] = []
    for view in views:
        folder = settings.offline_dir / view
        if folder.is_dir():
            offline_files.extend(folder.rglob("*.parquet"))
    label_folder = labels_dir(settings.validated_dir)
    label_files = [f for f in source_files if label_folder in f.parents]
    transactions = file_digests([f for f in source_files if f not in label_files], settings.data_dir)
    labels = file_digests(label_files, settings.data_dir)
    offline = file_digests(offline_files, settings.data_dir)
    return {
        "feature_service": spec.feature_service,
        "feast_project": store.project,
        "features": spec.features,
        "categorical_features": spec.categorical_features,
        "feature_refs": spec.feature_refs,
        "transactions_hash": combined_digest(transactions),
        "labels_hash": combined_digest(labels),
        "offline_features_hash": combined_digest(offline),
        "transaction_files": transactions,
        "label_files": labels,
        "offline_feature_files": offline,
    }


def hash_share(ids: pd.Series, seed: int, purpose: str) -> np.ndarray:
    """Each id's place in [0, 1), from a hash of the id keyed by the seed and the purpose.

    Sampling by it keeps the same rows whatever order or file the ids are read in, so a long history is sampled
    file by file; a purpose of its own keeps one sample's draws from replaying another's.
    """
    key = hashlib.sha256(f"{seed}:{purpose}".encode()).hexdigest()[:16]
    return pd.util.hash_array(np.asarray(ids, dtype=object), hash_key=key, categorize=False) / 2.0**64


def downsample_negatives(frame: pd.DataFrame, rate: float, seed: int) -> pd.DataFrame:
    """Keep every positive and a ``rate`` share of negatives, with a ``sample_weight`` column of ``1 / rate`` on them.

    The weighted sample has the original class balance in expectation, so a model fit with the weights stays
    calibrated while it trains on far fewer rows (fraud is ~1 % of transactions). Row order is kept.
    """
    if not 0 < rate <= 1:
        raise ValueError(f"negative_sample_rate={rate} must be in (0, 1]")
    positive = frame[LABEL].to_numpy() == 1
    if rate < 1:
        frame = frame.loc[positive | (hash_share(frame["transaction_id"], seed, "negatives") < rate)]
    out = frame.reset_index(drop=True)
    out[WEIGHT] = np.where(out[LABEL].to_numpy() == 1, 1.0, 1.0 / rate)
    return out


def uniform_sample(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Undo the class skew of a negative-down-sampled frame: a uniform random sample of the original rows.

    Negatives kept at rate r are already a uniform r-sample; keeping each positive with the same r makes the
    whole a uniform r-sample, whose distributions (what a drift reference needs) are the population's.
    """
    rate = 1.0 / float(frame.loc[frame[LABEL] == 0, WEIGHT].max()) if WEIGHT in frame.columns else 1.0
    if rate >= 1:
        return frame
    positives = frame[LABEL].to_numpy() == 1
    return frame.loc[~positives | (hash_share(frame["transaction_id"], seed, "positives") < rate)]


@dataclass(frozen=True)
class RowSample:
    """Which labeled rows a training set keeps: the training split's positives and a ``negative_rate`` share of
    its negatives (weighted), and a uniform share of each evaluation split (unweighted: a uniform sample keeps
    every metric's expectation)."""

    split: TimeSplit
    negative_rate: float
    validation_rate: float
    test_rate: float
    seed: int

    def __call__(self, frame: pd.DataFrame) -> pd.DataFrame:
        train, validation, test = split_frame(frame, self.split)
        kept = [downsample_negatives(train, self.negative_rate, self.seed)]
        for part, rate in ((validation, self.validation_rate), (test, self.test_rate)):
            if rate < 1:
                part = part.loc[hash_share(part["transaction_id"], self.seed, "evaluation") < rate]
            kept.append(part.assign(**{WEIGHT: 1.0}))
        return pd.concat(kept, ignore_index=True)


def build_training_set(
    settings: Settings,
    store: FeatureStore,
    feature_service: str,
    cutoff: datetime | None,
    validation_fraction: float,
    test_fraction: float,
    negative_sample_rate: float = 1.0,
    seed: int = 0,
    label_maturity_days: float = 0.0,
    burn_in_days: float = 0.0,
    max_evaluation_rows: int | None = None,
) -> TrainingSet:
    """Read labeled transactions, split them by time, join their point-in-time features, record lineage.

    Two passes over the labeled history, file by file, so no step holds it whole: the first reads only their
    times, for the split's boundaries; the second keeps the sampled rows (``RowSample``: the training split's
    negatives at ``negative_sample_rate``, each evaluation split uniformly down to ``max_evaluation_rows``)
    before the (costly) feature retrieval.
    """
    spec = read_feature_spec(store, feature_service)
    maturity = pd.Timedelta(days=label_maturity_days)
    times, cut, _ = read_labeled_transactions(
        settings.validated_dir, cutoff, maturity, columns=[TIMESTAMP], each=itemgetter([TIMESTAMP])
    )
    if times.empty:
        raise ValueError(f"no transaction had a label by the cut-off {cut}: nothing to train on")
    times = drop_burn_in(times, burn_in_days)
    split, labeled = split_sizes(times[TIMESTAMP], validation_fraction, test_fraction)
    del times
    rates = {
        part: min(1.0, max_evaluation_rows / labeled[part]) if max_evaluation_rows and labeled[part] else 1.0
        for part in ("validation", "test")
    }
    sample = RowSample(split, negative_sample_rate, rates["validation"], rates["test"], seed)
    rows, cut, files = read_labeled_transactions(settings.validated_dir, cut, maturity, each=sample)
    require_both_classes(split_frame(rows, split), sum(labeled.values()))
    extra = [c for c in (LABEL, ORACLE, WEIGHT) if c in rows.columns]
    features = retrieve_features(store, spec, entity_frame(rows))
    frame = features.merge(rows[["transaction_id", *extra]], on="transaction_id", how="left", validate="1:1")
    train, validation, test = split_frame(frame, split)
    lineage = describe_lineage(settings, spec, files, store)
    lineage["training_frame_hash"] = frame_digest(frame[[*spec.features, LABEL, WEIGHT]])
    lineage["cutoff"] = cut.isoformat()
    lineage["negative_sample_rate"] = negative_sample_rate
    lineage["evaluation_sample_rates"] = rates
    lineage["label_maturity_days"] = label_maturity_days
    lineage["burn_in_days"] = burn_in_days
    lineage["rows"] = {
        "labeled": sum(labeled.values()),
        **{f"{part}_before_sampling": count for part, count in labeled.items()},
        "train": len(train),
        "validation": len(validation),
        "test": len(test),
    }
    return TrainingSet(spec, train, validation, test, split, cut, lineage)
