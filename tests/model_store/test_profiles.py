"""The profile store: hourly layout, window merges, prediction logs, the numpy-2 workarounds, references."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from model_store.profiles import (
    REFERENCE_PROFILE_ARTIFACT,
    ProfileStore,
    load_reference_profile,
    log_reference_profile,
    profile_frame,
    window_bounds,
)
from model_store.settings import Settings

# Profiled as the processes that profile do: with whylogs' patches (their own tests: tests/model_store/libraries).
pytestmark = pytest.mark.usefixtures("whylogs_patches")

T0 = datetime(2025, 3, 1, 10, 0, tzinfo=UTC)


def make_frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "amount": rng.lognormal(3, 1, n),
            "channel": rng.choice(["chip", "contactless", "online"], n),
            "hour_of_day": rng.integers(0, 24, n),
            "score": rng.random(n),
        }
    )


def count(view: object, column: str) -> int:
    return int(view.get_column(column).to_summary_dict()["counts/n"])


def test_window_merges_every_file_of_the_hours_in_range(settings: Settings) -> None:
    store = ProfileStore(settings.profile_store, settings.model_name)
    first = store.write_window(profile_frame(make_frame(100, 1)), T0 + timedelta(minutes=5))
    store.write_window(profile_frame(make_frame(50, 2)), T0 + timedelta(minutes=55))
    store.write_window(profile_frame(make_frame(30, 3)), T0 + timedelta(hours=1, minutes=1))
    store.write_window(profile_frame(make_frame(7, 4)), T0 + timedelta(hours=2))

    assert first.parent == settings.profile_store / settings.model_name / "serving" / "2025-03-01T10"
    assert first.suffix == ".bin" and first.stat().st_mode & 0o777 == 0o644
    assert count(store.read_window(T0, T0 + timedelta(hours=1)), "amount") == 150
    assert count(store.read_window(T0, T0 + timedelta(hours=2)), "score") == 180
    assert store.hours(T0, T0 + timedelta(hours=3)) == [T0 + timedelta(hours=h) for h in range(3)]


def test_empty_window_reads_as_none(settings: Settings) -> None:
    store = ProfileStore(settings.profile_store, settings.model_name)
    assert store.read_window(T0, T0 + timedelta(hours=24)) is None
    store.write_window(profile_frame(make_frame(10)), T0)
    assert store.read_window(T0 + timedelta(hours=1), T0 + timedelta(hours=24)) is None


def test_damaged_profile_is_skipped_not_fatal(settings: Settings) -> None:
    store = ProfileStore(settings.profile_store, settings.model_name)
    good = store.write_window(profile_frame(make_frame(20)), T0)
    (good.parent / "broken.bin").write_bytes(b"not a profile")
    assert count(store.read_window(T0, T0 + timedelta(hours=1)), "amount") == 20


def test_naive_datetimes_are_refused(settings: Settings) -> None:
    store = ProfileStore(settings.profile_store, settings.model_name)
    with pytest.raises(ValueError, match="time zone"):
        store.write_window(profile_frame(make_frame(5)), datetime(2025, 3, 1, 10))
    with pytest.raises(ValueError, match="aware"):
        store.read_window(datetime(2025, 3, 1), datetime(2025, 3, 2))


def test_predictions_round_trip_by_hour(settings: Settings) -> None:
    store = ProfileStore(settings.profile_store, settings.model_name)
    predictions = pd.DataFrame(
        {
            "transaction_id": ["a", "b", "c"],
            "event_timestamp": pd.to_datetime(
                ["2025-03-01T10:01", "2025-03-01T10:02", "2025-03-01T11:00"], utc=True
            ),
            "score": [0.1, 0.9, 0.5],
            "decision": ["approve", "decline", "approve"],
            "model_version": ["3", "3", "3"],
        }
    )
    path = store.write_predictions(predictions.iloc[:2], T0)
    store.write_predictions(predictions.iloc[2:], T0 + timedelta(hours=1))

    assert path.parent.name == "2025-03-01T10" and path.parent.parent.name == "predictions"
    first_hour = store.read_predictions(T0, T0 + timedelta(hours=1))
    assert first_hour["transaction_id"].tolist() == ["a", "b"]
    assert str(first_hour["event_timestamp"].dt.tz) == "UTC"
    assert len(store.read_predictions(T0, T0 + timedelta(hours=2))) == 3
    assert store.count_predictions(T0, T0 + timedelta(hours=2)) == 3
    assert store.count_predictions(T0 + timedelta(hours=1), T0 + timedelta(hours=2)) == 1
    (path.parent / "damaged.parquet").write_bytes(b"not parquet")
    assert store.count_predictions(T0, T0 + timedelta(hours=2)) == 3
    empty = store.read_predictions(T0 + timedelta(days=1), T0 + timedelta(days=2))
    assert empty.empty and list(empty.columns) == list(predictions.columns)


def test_predictions_missing_a_column_name_it(settings: Settings) -> None:
    store = ProfileStore(settings.profile_store, settings.model_name)
    with pytest.raises(ValueError, match="model_version"):
        store.write_predictions(pd.DataFrame({"transaction_id": ["a"], "score": [0.1]}), T0)


def test_profile_frame_handles_types_whylogs_breaks_on_under_numpy2() -> None:
    df = pd.DataFrame(
        {
            "when": pd.to_datetime(["2025-03-01T10:00", "2025-03-01T11:00"], utc=True),
            "naive": pd.to_datetime(["2025-03-01", None]),
            "gap": pd.to_timedelta([1, 2], unit="h"),
            "name": pd.array(["a", None], dtype="string"),
            "single": pd.Categorical(["x", "x"]),
        }
    )
    view = profile_frame(df)
    when = view.get_column("when").to_summary_dict()
    assert when["distribution/min"] == pd.Timestamp("2025-03-01T10:00", tz="UTC").timestamp()
    assert view.get_column("gap").to_summary_dict()["distribution/max"] == 7200.0
    assert view.get_column("naive").to_summary_dict()["counts/null"] == 1
    name = view.get_column("name").to_summary_dict()
    assert (name["types/string"], name["counts/null"]) == (1, 1)
    assert view.get_column("single").to_summary_dict()["frequent_items/frequent_strings"][0].value == "x"
    assert df["name"].dtype == "string"  # the caller's frame is left alone


def test_profile_frame_tracks_what_whylogs_default_schema_tracks() -> None:
    """The schema leaves out only what whylogs builds and discards: the same metrics, the same values."""
    import whylogs as why

    frame = make_frame(300).assign(flag=lambda f: f["score"] > 0.5, note=None)
    ours, default = profile_frame(frame), why.log(frame).view()
    assert sorted(ours.get_columns()) == sorted(default.get_columns())
    for name in default.get_columns():
        assert ours.get_column(name).get_metric_names() == default.get_column(name).get_metric_names(), name
    assert ours.get_column("channel").get_metric("unicode_range") is None
    pd.testing.assert_frame_equal(
        ours.to_pandas().drop(columns="frequent_items/frequent_strings").sort_index(axis=1),
        default.to_pandas().drop(columns="frequent_items/frequent_strings").sort_index(axis=1),
    )
    # A fresh schema per profile: columns of an earlier frame do not appear in the next one.
    assert sorted(profile_frame(frame[["amount"]]).get_columns()) == ["amount"]


def test_window_bounds_are_whole_hours() -> None:
    start, end = window_bounds(datetime(2025, 3, 1, 10, 42, tzinfo=UTC), 24)
    assert (start, end) == (datetime(2025, 2, 28, 10, tzinfo=UTC), datetime(2025, 3, 1, 10, tzinfo=UTC))
    with pytest.raises(ValueError, match="positive"):
        window_bounds(T0, 0)


def test_reference_profile_round_trips_through_mlflow(settings: Settings, tmp_path: Path) -> None:
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_experiment("profiles-test")
    with mlflow.start_run() as run:
        log_reference_profile(profile_frame(make_frame(300)))
    artifacts = [a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "whylogs")]
    assert artifacts == [REFERENCE_PROFILE_ARTIFACT]
    assert count(load_reference_profile(run.info.run_id), "amount") == 300

    with mlflow.start_run() as bare:
        pass
    with pytest.raises(FileNotFoundError, match="reference profile"):
        load_reference_profile(bare.info.run_id)
