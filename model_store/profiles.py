"""The whylogs profile store: reference profiles in MLflow, serving profiles and prediction logs by hour.

Layout under ``<profile_store>/<model_name>/`` (the only code that knows it):
``serving/<YYYY-MM-DDTHH>/<uuid>.bin`` (whylogs profiles) and
``predictions/<YYYY-MM-DDTHH>/<uuid>.parquet`` (one row per decided transaction, by the model that decided it)
and ``shadow/<YYYY-MM-DDTHH>/<uuid>.parquet`` (the same rows scored by the model that did not decide: the
challenger in the shadow, or the champion beside a canary decision). Each writer adds its own file, so several
service workers can write the same hour; a window is read back by merging them.
"""

from __future__ import annotations

import logging
import tempfile
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

from model_store.atomic_files import write_atomically

if TYPE_CHECKING:
    from whylogs.core import DatasetProfileView

logger = logging.getLogger(__name__)

HOUR_FORMAT = "%Y-%m-%dT%H"
REFERENCE_PROFILE_DIR = "whylogs"
REFERENCE_PROFILE_FILE = "reference_profile.bin"
REFERENCE_PROFILE_ARTIFACT = f"{REFERENCE_PROFILE_DIR}/{REFERENCE_PROFILE_FILE}"
# The model's score, a column of the reference and serving profiles and of the prediction logs.
SCORE_COLUMN = "score"
PREDICTION_COLUMNS = ("transaction_id", "event_timestamp", SCORE_COLUMN, "decision", "model_version")
# The two prediction logs: the decisions, and the scores of the model that did not decide.
PredictionLog = Literal["predictions", "shadow"]


def profile_frame(df: pd.DataFrame) -> DatasetProfileView:
    """Profile a frame with whylogs, converting the column types whylogs 1.6 cannot track under numpy 2.

    Fast once ``model_store.libraries.whylogs.apply_patches()`` has run in the process (the same profile
    either way).
    """
    import whylogs as why

    return why.log(whylogs_compatible(df), schema=profile_schema()).view()


def profile_schema() -> Any:
    """whylogs' standard schema without the one metric it builds for every string column and then discards.

    whylogs 1.6 constructs a unicode-range metric per string column to read its name, then leaves it out
    because unicode ranges are not tracked by default: a large share of an hourly profile of the model's input.
    The profile's metrics are the same. A new schema each time: whylogs adds each profiled column to it.
    """
    from whylogs.core.metrics import StandardMetric
    from whylogs.core.resolvers import STANDARD_RESOLVER, ResolverSpec
    from whylogs.core.schema import DeclarativeSchema

    unicode_range = StandardMetric.unicode_range.value
    return DeclarativeSchema(
        [
            ResolverSpec(
                column_name=spec.column_name,
                column_type=spec.column_type,
                metrics=[m for m in spec.metrics if m.metric is not unicode_range],
                exclude=spec.exclude,
            )
            for spec in STANDARD_RESOLVER
        ]
    )


def whylogs_compatible(df: pd.DataFrame) -> pd.DataFrame:
    """A copy whylogs 1.6 can profile under numpy 2: the one place its data-type workarounds live.

    whylogs 1.6 reaches for ``np.unicode_`` (removed in numpy 2) when it meets datetime, timedelta or
    pandas ``string`` columns, and merges a one-value ``category`` column into a TypeError. Timestamps become
    epoch seconds (UTC; naive ones are taken as UTC), durations become seconds, strings and categories
    become ``object`` with ``None`` for missing values.
    """
    out = df.copy()
    for name, column in out.items():
        dtype = column.dtype
        if pd.api.types.is_datetime64_any_dtype(dtype):
            utc = column.dt.tz_convert(UTC) if column.dt.tz is not None else column.dt.tz_localize(UTC)
            out[name] = (utc - pd.Timestamp(0, tz=UTC)).dt.total_seconds()
        elif pd.api.types.is_timedelta64_dtype(dtype):
            out[name] = column.dt.total_seconds()
        elif isinstance(dtype, (pd.StringDtype, pd.CategoricalDtype)):
            out[name] = column.astype(object).where(column.notna(), None)
    return out


def read_profile(data: bytes) -> DatasetProfileView:
    """A serialized whylogs profile (fast once ``model_store.libraries.whylogs.apply_patches()`` has run)."""
    from whylogs.core import DatasetProfileView

    return DatasetProfileView.deserialize(data)


def hour_floor(moment: datetime) -> datetime:
    """The start of the UTC hour holding ``moment``; naive datetimes are refused rather than guessed."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"datetime {moment!r} has no time zone: pass an aware datetime (UTC)")
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


class ProfileStore:
    """Hourly whylogs profiles and prediction logs of one registered model's traffic."""

    def __init__(self, root: Path, model_name: str) -> None:
        if not model_name or "/" in model_name or model_name in {".", ".."}:
            raise ValueError(f"model_name {model_name!r} must be a plain, non-empty name")
        self.root = Path(root)
        self.model_name = model_name
        self.base = self.root / model_name

    @property
    def serving_dir(self) -> Path:
        return self.base / "serving"

    def log_dir(self, log: PredictionLog) -> Path:
        return self.base / log

    def write_window(self, view: DatasetProfileView, window_start: datetime, name: str | None = None) -> Path:
        """Add a profile to the hour holding ``window_start``; returns the file written.

        ``name`` makes the write idempotent (the same name replaces the same file); by default a new one.
        """
        path = self._path(self.serving_dir, window_start, name, ".bin")
        write_atomically(path, view.serialize())
        return path

    def read_window(self, start: datetime, end: datetime) -> DatasetProfileView | None:
        """Merge every profile of the hours starting in ``[start, end)``; ``None`` when there was no traffic."""
        merged: DatasetProfileView | None = None
        for path in self._files(self.serving_dir, start, end, ".bin"):
            try:
                view = read_profile(path.read_bytes())
            except Exception as error:  # a foreign or damaged file must not hide the rest of the window
                logger.warning("skipping unreadable profile %s: %s", path, error)
                continue
            merged = view if merged is None else merged.merge(view)
        return merged

    def write_predictions(
        self,
        predictions: pd.DataFrame,
        window_start: datetime,
        name: str | None = None,
        log: PredictionLog = "predictions",
    ) -> Path:
        """Add a batch of logged predictions to the hour holding ``window_start``; returns the file written
        (``name`` as for ``write_window``)."""
        missing = [c for c in PREDICTION_COLUMNS if c not in predictions.columns]
        if missing:
            raise ValueError(f"predictions lack column(s) {missing}; expected {list(PREDICTION_COLUMNS)}")
        frame = predictions.loc[:, list(PREDICTION_COLUMNS)].copy()
        frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
        path = self._path(self.log_dir(log), window_start, name, ".parquet")
        write_atomically(path, frame.to_parquet(index=False))
        return path

    def prediction_files(self, window_start: datetime, log: PredictionLog = "predictions") -> list[str]:
        """Names (without suffix) of the prediction logs of the hour holding ``window_start``."""
        folder = self.log_dir(log) / hour_floor(window_start).strftime(HOUR_FORMAT)
        if not folder.is_dir():
            return []
        return sorted(
            p.stem for p in folder.iterdir() if p.suffix == ".parquet" and not p.name.startswith(".")
        )

    def _path(self, kind_dir: Path, window_start: datetime, name: str | None, suffix: str) -> Path:
        if name is not None and (not name or "/" in name or name.startswith(".")):
            raise ValueError(f"file name {name!r} must be plain and not hidden")
        return (
            kind_dir / hour_floor(window_start).strftime(HOUR_FORMAT) / f"{name or uuid.uuid4().hex}{suffix}"
        )

    def read_predictions(
        self, start: datetime, end: datetime, log: PredictionLog = "predictions"
    ) -> pd.DataFrame:
        """Every prediction logged in the hours starting in ``[start, end)`` (an empty frame when none)."""
        frames = []
        for path in self._files(self.log_dir(log), start, end, ".parquet"):
            try:
                frames.append(pd.read_parquet(path))
            except Exception as error:  # same policy as profiles: report, keep the rest of the window
                logger.warning("skipping unreadable prediction log %s: %s", path, error)
        if not frames:
            empty = pd.DataFrame({c: pd.Series(dtype=object) for c in PREDICTION_COLUMNS})
            empty["event_timestamp"] = pd.Series(dtype="datetime64[us, UTC]")
            empty[SCORE_COLUMN] = pd.Series(dtype="float64")
            return empty
        return pd.concat(frames, ignore_index=True)

    def count_predictions(self, start: datetime, end: datetime) -> int:
        """How many predictions are logged in the hours starting in ``[start, end)``, from file metadata only."""
        import pyarrow.parquet as pq

        total = 0
        for path in self._files(self.log_dir("predictions"), start, end, ".parquet"):
            try:
                total += pq.read_metadata(path).num_rows
            except Exception as error:  # same policy as read_predictions
                logger.warning("skipping unreadable prediction log %s: %s", path, error)
        return total

    def hours(self, start: datetime, end: datetime) -> list[datetime]:
        """The hours in ``[start, end)`` that hold at least one serving profile."""
        return [hour for hour, _ in self._hour_dirs(self.serving_dir, start, end)]

    def _hour_dirs(self, kind_dir: Path, start: datetime, end: datetime) -> Iterator[tuple[datetime, Path]]:
        if start.tzinfo is None or end.tzinfo is None:
            raise ValueError(f"window [{start!r}, {end!r}) needs aware datetimes (UTC)")
        lower, upper = start.astimezone(UTC), end.astimezone(UTC)
        if not kind_dir.is_dir():
            return
        for child in sorted(kind_dir.iterdir()):
            try:
                hour = datetime.strptime(child.name, HOUR_FORMAT).replace(tzinfo=UTC)
            except ValueError:
                continue  # not a window folder (a temporary or foreign entry)
            if child.is_dir() and lower <= hour < upper:
                yield hour, child

    def _files(self, kind_dir: Path, start: datetime, end: datetime, suffix: str) -> Iterator[Path]:
        for _, folder in self._hour_dirs(kind_dir, start, end):
            yield from sorted(
                p for p in folder.iterdir() if p.suffix == suffix and not p.name.startswith(".")
            )


def window_bounds(end: datetime, hours: int) -> tuple[datetime, datetime]:
    """The ``hours`` whole hours before ``end`` (rounded down to the hour), as ``[start, end)``."""
    if hours <= 0:
        raise ValueError(f"window length must be a positive number of hours, got {hours}")
    upper = hour_floor(end)
    return upper - timedelta(hours=hours), upper


def log_reference_profile(view: DatasetProfileView, run_id: str | None = None) -> None:
    """Log ``view`` as the artifact ``whylogs/reference_profile.bin`` of ``run_id`` (or of the active run)."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / REFERENCE_PROFILE_FILE
        path.write_bytes(view.serialize())
        mlflow.log_artifact(str(path), artifact_path=REFERENCE_PROFILE_DIR, run_id=run_id)


def load_reference_profile(run_id: str) -> DatasetProfileView:
    """The reference profile the training run ``run_id`` logged; a clear error when it has none."""
    import mlflow
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=REFERENCE_PROFILE_ARTIFACT, dst_path=tmp
            )
        except (MlflowException, OSError) as error:
            raise FileNotFoundError(
                f"run {run_id} has no reference profile at artifact {REFERENCE_PROFILE_ARTIFACT!r}: "
                "the training flow logs it with model_store.profiles.log_reference_profile"
            ) from error
        return read_profile(Path(local).read_bytes())
