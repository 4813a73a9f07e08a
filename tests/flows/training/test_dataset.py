"""Training sets: point-in-time joins, the feature list from the FeatureService, label cut-off, time split."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flows.feature_store.labels import write_validated_labels
from flows.feature_store.offline_store import partition_files, write_partitions
from flows.training.dataset import (
    WEIGHT,
    RowSample,
    build_training_set,
    drop_burn_in,
    entity_frame,
    open_feature_store,
    read_feature_spec,
    read_labeled_transactions,
    retrieve_features,
    split_by_time,
    split_frame,
    split_sizes,
    time_split,
)
from model_store.settings import Settings

T = pd.Timestamp("2026-03-01 11:00:00", tz="UTC")  # the transaction being scored
EARLY = pd.Timestamp("2026-01-01", tz="UTC")


def _activity(customer_rows: list[tuple[pd.Timestamp, int, float]]) -> pd.DataFrame:
    """Customer activity rows (stamp, txn_count_24h, amount_mean_7d) with the other columns filled plainly."""
    frame = pd.DataFrame(customer_rows, columns=["event_timestamp", "txn_count_24h", "amount_mean_7d"])
    frame["customer_id"] = 1
    for name in ("txn_count_1h", "txn_count_7d", "distinct_merchants_24h"):
        frame[name] = frame["txn_count_24h"]
    for name in ("amount_sum_1h", "amount_sum_24h", "amount_sum_7d", "amount_mean_1h", "amount_mean_24h"):
        frame[name] = frame["amount_mean_7d"]
    frame["seconds_since_prev_txn"] = 60.0
    frame["last_txn_unix"] = (frame["event_timestamp"] - pd.Timedelta("1ms")).astype("int64") // 10**9
    frame["event_timestamp"] = frame["event_timestamp"].astype("datetime64[us, UTC]")
    return frame


def _write_constructed_store(settings: Settings) -> None:
    """An offline store where each feature has one value known before T and another stamped after it."""
    ms = pd.Timedelta("1ms")
    tables = {
        "customer_activity": _activity(
            [(T - pd.Timedelta("1h") + ms, 1, 10.0), (T + ms, 50, 30.0), (T + pd.Timedelta("1h"), 99, 40.0)]
        ),
        "merchant_activity": pd.DataFrame(
            {
                "merchant_id": [1, 1],
                "event_timestamp": [T - pd.Timedelta("2h"), T + ms],
                "merchant_txn_count_1h": [5, 77],
                "merchant_txn_count_24h": [5, 77],
                "merchant_amount_mean_24h": [12.0, 900.0],
            }
        ),
        "merchant_risk": pd.DataFrame(
            {
                "merchant_id": [1, 1],
                "event_timestamp": [T.floor("D"), T + pd.Timedelta("1h")],
                "merchant_fraud_rate_30d": [0.01, 0.9],
                "merchant_labeled_txn_30d": [100, 200],
            }
        ),
        "customer_profile": pd.DataFrame(
            {
                "customer_id": [1],
                "event_timestamp": [EARLY],
                "home_region": ["north"],
                "card_type": ["credit"],
                "credit_limit": [1000.0],
                "account_created_unix": [EARLY.value // 10**9],
            }
        ),
        "merchant_profile": pd.DataFrame(
            {
                "merchant_id": [1],
                "event_timestamp": [EARLY],
                "merchant_category": ["travel"],
                "merchant_region": ["south"],
            }
        ),
    }
    for name, frame in tables.items():
        frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True).astype(
            "datetime64[us, UTC]"
        )
        write_partitions(frame, settings.offline_dir / name, "constructed")


def _feast_apply(settings: Settings) -> None:
    feast = Path(sys.executable).with_name("feast")
    command = [str(feast), "-c", str(settings.feast_repo_path), "-f", str(settings.feast_yaml), "apply"]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_training_rows_see_only_feature_values_known_before_the_transaction(settings: Settings) -> None:
    _write_constructed_store(settings)
    _feast_apply(settings)
    store = open_feature_store(settings)
    spec = read_feature_spec(store, settings.feature_service)
    transactions = pd.DataFrame(
        {
            "transaction_id": ["at_T", "later"],
            "customer_id": [1, 1],
            "merchant_id": [1, 1],
            "event_timestamp": [T, T + pd.Timedelta("2h")],
            "amount": [20.0, 20.0],
            "channel": ["online", "chip"],
        }
    )
    rows = retrieve_features(store, spec, entity_frame(transactions)).set_index("transaction_id")

    at_t = rows.loc["at_T"]
    # Values stamped after T (even by 1 ms: the transaction's own activity) must not leak into its row.
    assert at_t["txn_count_24h"] == 1
    assert at_t["merchant_txn_count_24h"] == 5
    assert at_t["merchant_fraud_rate_30d"] == pytest.approx(0.01)
    # The on-demand view computes from the same as-of values and the request's own fields.
    assert at_t["amount_to_mean_7d"] == pytest.approx(2.0)
    assert at_t["seconds_since_last_txn"] == pytest.approx(3600.0, abs=1)
    assert at_t["channel"] == "online"
    assert at_t["merchant_category"] == "travel" and at_t["home_region"] == "north"
    assert at_t["is_foreign_merchant"] == 1
    # Later rows do see the newer values, so the join is not simply stuck on the first row.
    later = rows.loc["later"]
    assert later["txn_count_24h"] == 99
    assert later["merchant_fraud_rate_30d"] == pytest.approx(0.9)


def test_feature_list_and_categoricals_come_from_the_feature_service(pipeline_settings: Settings) -> None:
    store = open_feature_store(pipeline_settings)
    spec = read_feature_spec(store, pipeline_settings.feature_service)
    service = store.get_feature_service(pipeline_settings.feature_service)
    declared = [f.name for p in service.feature_view_projections for f in p.features]
    assert spec.features == declared
    assert set(spec.categorical_features) == {"home_region", "card_type", "merchant_category", "channel"}
    assert "last_txn_unix" not in spec.features  # read by the on-demand view, not served to the model


def test_training_set_matches_an_as_of_join_of_the_offline_store(pipeline_settings: Settings) -> None:
    """On the pipeline's real data, every row's activity features are the latest ones stamped at or before it."""
    store = open_feature_store(pipeline_settings)
    data = build_training_set(pipeline_settings, store, pipeline_settings.feature_service, None, 0.15, 0.15)
    rows = pd.concat(data.parts().values()).sort_values("event_timestamp")
    activity = pd.read_parquet(pipeline_settings.offline_dir / "customer_activity").drop(columns="date")
    activity = activity.sort_values("event_timestamp")
    expected = pd.merge_asof(
        rows[["transaction_id", "customer_id", "event_timestamp"]],
        activity[["customer_id", "event_timestamp", "txn_count_24h"]].rename(
            columns={"txn_count_24h": "expected"}
        ),
        on="event_timestamp",
        by="customer_id",
        direction="backward",  # the view has no TTL: the latest row at or before, however old
    )
    merged = rows.merge(expected[["transaction_id", "expected"]], on="transaction_id")
    assert len(merged) == len(rows) > 1000
    np.testing.assert_array_equal(merged["txn_count_24h"].to_numpy(), merged["expected"].to_numpy())
    # A transaction never counts itself: its own activity row is stamped 1 ms after it.
    assert (merged["txn_count_24h"].fillna(0) >= 0).all()
    assert data.lineage["transactions_hash"] and data.lineage["transaction_files"]
    assert data.train["event_timestamp"].max() < data.validation["event_timestamp"].min()
    assert data.validation["event_timestamp"].max() < data.test["event_timestamp"].min()


def test_a_sampled_training_set_is_the_full_sets_rows_it_keeps(pipeline_settings: Settings) -> None:
    """Negatives of train and both evaluation splits sampled while the history is read file by file: the split
    is the full set's, every positive of train is kept, and each kept row is the full set's row (its features,
    label and weight)."""
    store = open_feature_store(pipeline_settings)
    service = pipeline_settings.feature_service
    full = build_training_set(pipeline_settings, store, service, None, 0.15, 0.15)
    cap = len(full.validation) // 3
    sampled = build_training_set(
        pipeline_settings, store, service, None, 0.15, 0.15, 0.2, seed=3, max_evaluation_rows=cap
    )

    assert sampled.split == full.split
    rows = sampled.lineage["rows"]
    assert rows["validation_before_sampling"] == len(full.validation)
    assert rows["test_before_sampling"] == len(full.test)
    assert sampled.lineage["evaluation_sample_rates"]["validation"] == pytest.approx(1 / 3, rel=0.01)
    for part in ("validation", "test"):
        got, expected = len(sampled.parts()[part]), rows[f"{part}_before_sampling"]
        rate = sampled.lineage["evaluation_sample_rates"][part]
        assert abs(got - expected * rate) < 4 * np.sqrt(expected * rate * (1 - rate)), part
    assert sampled.train["is_fraud"].sum() == full.train["is_fraud"].sum()
    assert set(sampled.train.loc[sampled.train["is_fraud"] == 0, WEIGHT]) == {5.0}
    for part, frame in sampled.parts().items():
        reference = full.parts()[part].set_index("transaction_id")
        mine = frame.set_index("transaction_id")
        columns = [*sampled.spec.features, "is_fraud"]
        pd.testing.assert_frame_equal(mine[columns], reference.loc[mine.index, columns], check_dtype=False)


def test_the_sample_is_the_same_whatever_files_the_history_is_read_in(tmp_path: Path) -> None:
    """Rows are kept by a hash of their id, so one file or several in another order keep the same rows."""
    rng = np.random.default_rng(2)
    n = 4000
    times = pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(
        np.sort(rng.integers(0, 20 * 86400, n)), "s"
    )
    frame = pd.DataFrame(
        {
            "transaction_id": [f"t{i}" for i in range(n)],
            "customer_id": 1,
            "merchant_id": 1,
            "event_timestamp": times.as_unit("us"),
            "amount": 10.0,
            "channel": "chip",
            "is_fraud": (rng.random(n) < 0.05).astype("int64"),
            "label_timestamp": times.as_unit("us"),
        }
    )
    split = time_split(frame["event_timestamp"], 0.2, 0.2)
    sample = RowSample(split, negative_rate=0.3, validation_rate=0.5, test_rate=0.25, seed=7)
    write_partitions(frame, tmp_path / "one" / "transactions", "b1")
    shuffled = frame.sample(frac=1, random_state=1)
    for i in range(5):
        write_partitions(
            shuffled.iloc[i * n // 5 : (i + 1) * n // 5], tmp_path / "many" / "transactions", f"b{i}"
        )

    one, _, _ = read_labeled_transactions(tmp_path / "one", each=sample)
    many, _, files = read_labeled_transactions(tmp_path / "many", each=sample)

    assert len(files) > len(partition_files(tmp_path / "one" / "transactions"))
    pd.testing.assert_frame_equal(many, one)
    train, validation, test = split_frame(one, split)
    assert train["is_fraud"].sum() == split_frame(frame, split)[0]["is_fraud"].sum()
    assert set(train.loc[train["is_fraud"] == 0, WEIGHT]) == {1 / 0.3}
    assert len(test) < len(validation) < len(split_frame(frame, split)[1])


def test_labels_after_the_cutoff_are_left_out(tmp_path: Path) -> None:
    times = pd.date_range("2026-01-01", periods=6, freq="D", tz="UTC")
    frame = pd.DataFrame(
        {
            "transaction_id": [f"t{i}" for i in range(6)],
            "customer_id": 1,
            "merchant_id": 1,
            "event_timestamp": times,
            "amount": 10.0,
            "channel": "chip",
            "is_fraud": [0, 1, 0, None, 1, 0],
            "label_timestamp": [
                times[0],
                times[1] + pd.Timedelta("1D"),
                times[5],
                pd.NaT,
                times[4],
                times[5],
            ],
        }
    )
    folder = tmp_path / "transactions"
    write_partitions(frame, folder, "b1")
    labeled, cutoff, files = read_labeled_transactions(tmp_path, cutoff=times[4].to_pydatetime())
    # t2's label arrived after the cut-off, t3 has none, t5 happened after it.
    assert labeled["transaction_id"].tolist() == ["t0", "t1", "t4"]
    assert cutoff == times[4]
    assert len(files) == 6
    mature, _, _ = read_labeled_transactions(tmp_path, times[4].to_pydatetime(), pd.Timedelta(days=3))
    assert mature["transaction_id"].tolist() == ["t0", "t1"]
    with pytest.raises(FileNotFoundError, match="run the feature pipeline first"):
        read_labeled_transactions(tmp_path / "missing")


def test_labels_arriving_after_their_transactions_in_a_labels_file_are_trained_on(tmp_path: Path) -> None:
    times = pd.date_range("2026-01-01", periods=4, freq="D", tz="UTC").as_unit("us")
    frame = pd.DataFrame(
        {
            "transaction_id": [f"t{i}" for i in range(4)],
            "customer_id": 1,
            "merchant_id": 1,
            "event_timestamp": times,
            "amount": 10.0,
            "channel": "chip",
            "is_fraud": pd.array([0, None, None, None], dtype="Int64"),
            "label_timestamp": pd.Series([times[1], pd.NaT, pd.NaT, pd.NaT], dtype=times.dtype),
            "oracle_probability": [0.1, 0.2, 0.3, 0.4],
        }
    )
    write_partitions(frame, tmp_path / "transactions", "b1")
    chargebacks = pd.DataFrame(
        {
            "transaction_id": ["t1", "t2", "t0-unknown"],
            "is_fraud": [1, 0, 1],
            "label_timestamp": pd.Series([times[2], times[3] + pd.Timedelta("1h"), times[2]]).dt.as_unit(
                "us"
            ),
        }
    )
    write_validated_labels(chargebacks, tmp_path, "cb-1")

    labeled, _, files = read_labeled_transactions(tmp_path, cutoff=times[3].to_pydatetime())
    # t1's label arrived in the file before the cut-off; t2's arrived after it, t3 has none.
    assert labeled["transaction_id"].tolist() == ["t0", "t1"]
    assert labeled["is_fraud"].tolist() == [0, 1]
    assert labeled["oracle_probability"].tolist() == [0.1, 0.2]
    assert [f.parent.parent.name for f in files].count("labels") == 2
    later, _, _ = read_labeled_transactions(tmp_path, cutoff=times[3] + pd.Timedelta("1D"))
    assert later["transaction_id"].tolist() == ["t0", "t1", "t2"]


def test_burn_in_leaves_out_the_first_days_of_history_and_says_when_nothing_is_left() -> None:
    times = pd.date_range("2026-01-01", periods=10 * 24, freq="h", tz="UTC")
    frame = pd.DataFrame({"event_timestamp": times, "is_fraud": 0})
    kept = drop_burn_in(frame, 7)
    assert kept["event_timestamp"].min() == times[0] + pd.Timedelta(days=7)
    assert len(kept) == 3 * 24
    assert drop_burn_in(frame, 0) is frame
    with pytest.raises(ValueError, match="burn_in_days=11 leaves no labeled transaction"):
        drop_burn_in(frame, 11)


def test_split_is_by_time_and_refuses_a_split_without_both_classes() -> None:
    times = pd.date_range("2026-01-01", periods=100, freq="h", tz="UTC")
    frame = pd.DataFrame({"event_timestamp": times, "is_fraud": np.arange(100) % 5 == 0}).astype(
        {"is_fraud": int}
    )
    train, validation, test, split = split_by_time(frame.sample(frac=1, random_state=0), 0.2, 0.1)
    assert (len(train), len(validation), len(test)) == (70, 20, 10)
    assert train["event_timestamp"].max() < split.validation_start <= validation["event_timestamp"].min()
    assert validation["event_timestamp"].max() < split.test_start == test["event_timestamp"].min()
    frame["is_fraud"] = 0
    with pytest.raises(ValueError, match="needs both classes"):
        split_by_time(frame, 0.2, 0.1)


def test_split_sizes_count_what_split_frame_keeps_with_ties_on_the_boundaries() -> None:
    # Ten rows per timestamp: every boundary falls inside a tie, whose rows must all count on one side.
    times = pd.Series(np.repeat(pd.date_range("2026-01-01", periods=37, freq="min", tz="UTC"), 10))
    frame = pd.DataFrame({"event_timestamp": times.sample(frac=1, random_state=3).to_numpy()})
    split, sizes = split_sizes(frame["event_timestamp"], 0.15, 0.2)
    assert split == time_split(frame["event_timestamp"], 0.15, 0.2)
    parts = dict(zip(("train", "validation", "test"), map(len, split_frame(frame, split)), strict=True))
    assert sizes == parts
    assert sum(sizes.values()) == len(frame) and all(size % 10 == 0 for size in sizes.values())
    with pytest.raises(ValueError, match="leave rows for training"):
        split_sizes(frame["event_timestamp"], 0.5, 0.5)


def test_an_unknown_feature_service_says_what_to_do(pipeline_settings: Settings) -> None:
    with pytest.raises(LookupError, match="run the feature pipeline"):
        read_feature_spec(open_feature_store(pipeline_settings), "no_such_service_v9")


def test_the_join_in_batches_gives_the_rows_of_one_join(settings: Settings) -> None:
    _write_constructed_store(settings)
    _feast_apply(settings)
    store = open_feature_store(settings)
    spec = read_feature_spec(store, settings.feature_service)
    transactions = pd.DataFrame(
        {
            "transaction_id": ["later", "at_T", "between"],
            "customer_id": [1, 1, 1],
            "merchant_id": [1, 1, 1],
            "event_timestamp": [T + pd.Timedelta("2h"), T, T + pd.Timedelta("1h")],
            "amount": [20.0, 20.0, 35.0],
            "channel": ["chip", "online", "online"],
        }
    )
    whole = retrieve_features(store, spec, entity_frame(transactions))
    batched = retrieve_features(store, spec, entity_frame(transactions), batch_rows=2)

    pd.testing.assert_frame_equal(batched, whole)
    assert list(batched["transaction_id"]) == ["at_T", "between", "later"]
