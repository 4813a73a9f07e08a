"""The feature pipeline against the real Redis: online values equal the latest offline values, reruns are no-ops."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis

from flows.feature_pipeline import IngestedBatches, feature_pipeline, load_feature_inputs
from flows.feature_store.definitions import apply_definitions
from flows.feature_store.ingestion import RawBatch
from flows.feature_store.labels import read_labels, write_validated_labels
from flows.feature_store.offline_store import max_timestamp, read_partitions, write_partitions
from flows.fraud_data.features import compute_merchant_risk
from flows.fraud_data.generator import split_labels, write_labels
from flows.monitoring.performance import load_labels
from flows.training.dataset import read_labeled_transactions
from model_store.settings import REPO_ROOT, Settings

VIEWS = {
    "customer_activity": "customer_id",
    "customer_profile": "customer_id",
    "merchant_activity": "merchant_id",
    "merchant_risk": "merchant_id",
    "merchant_profile": "merchant_id",
}

READ_ONLINE = """
import json, sys
from feast import FeatureStore
store = FeatureStore(repo_path=sys.argv[1], fs_yaml_file=sys.argv[2])
requests = json.load(sys.stdin)
print(json.dumps({
    view: store.get_online_features(features=r["features"], entity_rows=r["rows"]).to_dict()
    for view, r in requests.items()
}))
"""


def _latest_offline(settings: Settings, view: str, key: str) -> pd.DataFrame:
    frame = read_partitions(settings.offline_dir / view)
    return (
        frame.sort_values("event_timestamp", kind="stable").drop_duplicates(key, keep="last").set_index(key)
    )


def test_fresh_process_sdk_reads_latest_offline_values(pipeline_settings: Settings) -> None:
    """Feast's SDK in a new interpreter (only the environment in common) returns the latest offline rows."""
    samples, requests = {}, {}
    for view, key in VIEWS.items():
        latest = _latest_offline(pipeline_settings, view, key)
        samples[view] = latest.sample(n=min(25, len(latest)), random_state=0)
        columns = [c for c in latest.columns if c not in {"event_timestamp", "date"}]
        requests[view] = {
            "features": [f"{view}:{c}" for c in columns],
            "rows": [{key: int(i)} for i in samples[view].index],
        }
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            READ_ONLINE,
            str(REPO_ROOT / "feature_repo"),
            str(pipeline_settings.feast_yaml),
        ],
        input=json.dumps(requests),
        capture_output=True,
        text=True,
        env={**_base_env(), **pipeline_settings.feast_env()},
        check=True,
    )
    answers = json.loads(done.stdout)
    for view, key in VIEWS.items():
        sample = samples[view]
        online = pd.DataFrame(answers[view]).set_index(key)
        for feature in requests[view]["features"]:
            column = feature.split(":")[1]
            expected = sample[column].tolist()
            got = online.loc[sample.index, column].tolist()
            if sample[column].dtype.kind == "f":
                np.testing.assert_allclose(got, expected, err_msg=feature)
            else:
                assert got == expected, feature


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith(("RTML_", "FEAST_"))}


def test_second_run_changes_nothing(pipeline_settings: Settings) -> None:
    files_before = sorted(p.stat().st_mtime_ns for p in pipeline_settings.data_dir.rglob("*.parquet"))
    client = redis.Redis.from_url(pipeline_settings.redis_url)
    keys_before = sorted(client.scan_iter(match=f"*{pipeline_settings.feast_project}", count=1000))
    sample = keys_before[:50]
    values_before = [client.hgetall(k) for k in sample]

    summary = feature_pipeline()

    assert summary == {"transactions": 0, "labels": 0}
    assert sorted(p.stat().st_mtime_ns for p in pipeline_settings.data_dir.rglob("*.parquet")) == files_before
    assert sorted(client.scan_iter(match=f"*{pipeline_settings.feast_project}", count=1000)) == keys_before
    assert [client.hgetall(k) for k in sample] == values_before


def test_every_row_is_accounted_for(pipeline_settings: Settings) -> None:
    """Validated plus quarantined rows equal the raw rows: nothing dropped, nothing kept silently."""
    raw = pd.concat(
        pd.read_parquet(p) for p in sorted((pipeline_settings.raw_dir / "transactions").glob("*.parquet"))
    )
    validated = read_partitions(pipeline_settings.validated_dir / "transactions")
    quarantined = sum(len(pd.read_parquet(p)) for p in pipeline_settings.quarantine_dir.glob("*.parquet"))
    assert len(validated) + quarantined == len(raw)
    assert validated["transaction_id"].is_unique
    activity = read_partitions(pipeline_settings.offline_dir / "customer_activity")
    assert len(activity) == len(validated)


@pytest.mark.parametrize("view", ["customer_activity", "merchant_risk"])
def test_materialization_is_recorded_in_feast_registry(pipeline_settings: Settings, view: str) -> None:
    store = pipeline_settings.feature_store()
    fv = store.get_feature_view(view, allow_registry_cache=False)
    assert fv.most_recent_end_time is not None
    latest = read_partitions(pipeline_settings.offline_dir / view)["event_timestamp"].max()
    assert pd.Timestamp(fv.most_recent_end_time) >= latest


def test_embedded_sqlite_online_store(
    tmp_path, monkeypatch: pytest.MonkeyPatch, prefect_harness: None
) -> None:
    """Without Redis the same pipeline materializes into Feast's SQLite store, read back by the SDK."""
    from tests.conftest import make_settings
    from tests.fixtures.pipeline import generate_small_raw

    settings = make_settings(tmp_path / "rtml", monkeypatch, online_store="sqlite")
    tx = generate_small_raw(settings.raw_dir, end=pd.Timestamp.now(tz="UTC").floor("h"))
    summary = feature_pipeline()
    assert summary["transactions"] == len(tx)

    latest = _latest_offline(settings, "customer_activity", "customer_id").head(5)
    online = (
        settings.feature_store()
        .get_online_features(
            features=["customer_activity:txn_count_7d", "customer_activity:amount_sum_7d"],
            entity_rows=[{"customer_id": int(i)} for i in latest.index],
        )
        .to_dict()
    )
    assert online["txn_count_7d"] == latest["txn_count_7d"].tolist()
    np.testing.assert_allclose(online["amount_sum_7d"], latest["amount_sum_7d"])


def test_feast_apply_needs_no_data_and_runs_again_only_when_something_changed(settings: Settings) -> None:
    assert not settings.offline_dir.exists()
    assert "Deploying infrastructure" in (apply_definitions(settings) or "")
    assert apply_definitions(settings) is None  # same definitions, same configuration
    store = settings.feature_store()
    assert {fv.name for fv in store.list_feature_views()} == set(VIEWS)
    Path(str(settings.feast_registry)).unlink()  # a registry gone is applied again
    assert apply_definitions(settings) is not None


def test_a_second_apply_during_the_first_waits_and_finds_it_done(settings: Settings) -> None:
    """The demo applies in the background while the pipeline's own apply task starts: Feast runs once."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2) as pool:
        outputs = list(pool.map(lambda _: apply_definitions(settings), range(2)))
    applied = [output for output in outputs if output is not None]
    assert len(applied) == 1 and "Deploying infrastructure" in applied[0]


def test_recent_history_from_files_is_published_for_the_window_processor(pipeline_settings: Settings) -> None:
    """Both generated batches came from files: their last 7 days are in the stream, as backfill, once each."""
    from services.stream.events import decode

    client = redis.Redis.from_url(pipeline_settings.redis_url)
    entries = client.xrange(pipeline_settings.stream("transactions"))
    client.close()
    backfill = [e for e in (decode(i, f) for i, f in entries) if e.source == "backfill"]
    validated = read_partitions(pipeline_settings.validated_dir / "transactions")
    newest = validated["event_timestamp"].max()
    # Each run publishes its own batch's last week (the second run's look-back overlaps the first's).
    expected = set(
        validated.loc[validated["event_timestamp"] > newest - pd.Timedelta("7D"), "transaction_id"]
    )
    published = [e.transaction.transaction_id for e in backfill]
    assert expected <= set(published)
    assert all(e.transaction.timestamp > (newest - pd.Timedelta("60D")).to_pydatetime() for e in backfill)


def test_files_the_landing_writer_made_are_not_published_back() -> None:
    from flows.feature_store.backfill import is_from_stream, recent

    assert is_from_stream("stream-1700000000000-0_1700000000999-3") and not is_from_stream("batch_002")
    frame = pd.DataFrame(
        {
            "event_timestamp": pd.to_datetime(["2026-01-01", "2026-01-05", "2026-01-09"], utc=True),
            "v": [1, 2, 3],
        }
    )
    assert recent(frame, pd.Timedelta("7D"))["v"].tolist() == [2, 3]


@pytest.mark.slow
def test_running_the_module_as_the_readme_says_prints_no_traceback(settings: Settings) -> None:
    """`python -m flows.feature_pipeline` from a shell with no Prefect settings: Prefect starts a temporary
    server on a new PREFECT_HOME. Its telemetry heartbeat used to fail there with "database is locked"
    tracebacks; pyproject.toml's [tool.prefect.server] turns it off. Our loggers show beside the flow's."""
    from flows.fraud_data.generator import GeneratorConfig, generate_raw_data, write_raw_data

    end = pd.Timestamp.now(tz="UTC").floor("D")
    config = GeneratorConfig(
        n_transactions=2_000, n_customers=100, n_merchants=20, start=end - pd.Timedelta(days=14), days=14
    )
    data = generate_raw_data(config)
    write_raw_data(data, settings.raw_dir, "batch_001")
    # The caller's Prefect settings (the Makefile's and conftest's analytics switch among them) stay out.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "DO_NOT_TRACK"}
    env.update(
        PREFECT_HOME=str(settings.home / "prefect"), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="90"
    )
    done = subprocess.run(
        [sys.executable, "-m", "flows.feature_pipeline"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-5000:]
    assert "Traceback" not in output, output[-5000:]
    assert f"'transactions': {len(data.transactions)}" in done.stdout
    assert re.search(
        r"flows\.feature_store\.validation - Batch batch_001: \d+ valid, \d+ quarantined", output
    )


def _sorted(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    return frame.sort_values(by, kind="stable").reset_index(drop=True)


@pytest.mark.slow
def test_labels_sent_on_their_own_give_what_inline_labels_give(
    pipeline_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The session's data again, batch_002's labels taken out of its rows and sent as a labels file that had
    arrived by the data's "now": the same merchant risk, and the training set and live performance read the same
    labels. A label for a transaction labelled inline before is quarantined."""
    from tests.conftest import delete_project_keys, make_settings

    inline = pipeline_settings
    as_of = max_timestamp(inline.validated_dir / "transactions")
    expected_risk = _sorted(
        read_partitions(inline.offline_dir / "merchant_risk"), ["event_timestamp", "merchant_id"]
    )
    expected_training, _, _ = read_labeled_transactions(inline.validated_dir)
    since = as_of - pd.Timedelta(days=30)
    expected_performance = _sorted(load_labels(inline.validated_dir, since, as_of), ["transaction_id"])
    raw = inline.raw_dir

    settings = make_settings(tmp_path / "rtml", monkeypatch)
    for name in ("customers.parquet", "merchants.parquet", "transactions/batch_001.parquet"):
        (settings.raw_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (settings.raw_dir / name).write_bytes((raw / name).read_bytes())
    unlabelled, labels = split_labels(pd.read_parquet(raw / "transactions" / "batch_002.parquet"))
    unlabelled.to_parquet(settings.raw_dir / "transactions" / "batch_002.parquet", index=False)
    arrived = labels[labels["label_timestamp"] <= as_of]
    first = pd.read_parquet(raw / "transactions" / "batch_001.parquet").iloc[0]
    relabel = pd.DataFrame(
        {
            "transaction_id": [first["transaction_id"]],
            "is_fraud": [1 - first["is_fraud"]],
            "label_timestamp": [as_of],
        }
    )
    write_labels(pd.concat([arrived, relabel], ignore_index=True), settings.raw_dir, "chargebacks-0001")
    try:
        summary = feature_pipeline()

        assert summary["transactions"] == len(read_partitions(inline.validated_dir / "transactions"))
        assert summary["labels"] == len(arrived) > 0
        quarantined = pd.read_parquet(settings.quarantine_dir / "labels" / "chargebacks-0001.parquet")
        assert quarantined["quarantine_reason"].tolist() == [
            f"transaction_id: labelled before (is_fraud={first['is_fraud']} at "
            f"{first['label_timestamp'].isoformat()} in its transaction row)"
        ]
        risk = _sorted(
            read_partitions(settings.offline_dir / "merchant_risk"), ["event_timestamp", "merchant_id"]
        )
        pd.testing.assert_frame_equal(risk, expected_risk)
        training, _, files = read_labeled_transactions(settings.validated_dir)
        pd.testing.assert_frame_equal(training, expected_training)
        assert any("labels" in f.parts for f in files)
        performance = _sorted(load_labels(settings.validated_dir, since, as_of), ["transaction_id"])
        pd.testing.assert_frame_equal(performance, expected_performance)
        assert feature_pipeline() == {"transactions": 0, "labels": 0}  # each labels file once
    finally:
        delete_project_keys(settings.feast_project)


def test_merchant_risk_counts_labels_that_arrived_on_their_own(settings: Settings) -> None:
    """Labels of earlier transactions arrive in a labels file, one before its transaction: the next run's risk
    snapshots count them all."""
    day = pd.Timestamp("2026-03-01", tz="UTC")
    old = pd.DataFrame(
        {
            "transaction_id": [f"old-{i}" for i in range(6)],
            "event_timestamp": pd.date_range(day + pd.Timedelta("9h"), periods=6, freq="10min").as_unit("us"),
            "customer_id": 1,
            "merchant_id": [10, 10, 10, 11, 11, 11],
            "amount": 20.0,
            "channel": "online",
            "is_fraud": pd.array([None] * 6, dtype="Int64"),
            "label_timestamp": pd.Series(pd.NaT, index=range(6), dtype="datetime64[us, UTC]"),
        }
    )
    validated = settings.validated_dir
    write_partitions(old, validated / "transactions", "tx-1")
    feed = pd.DataFrame(
        {
            "transaction_id": [*old["transaction_id"], "late"],
            "is_fraud": [1, 1, 0, 0, 0, 0, 1],
            "label_timestamp": pd.Series([day + pd.Timedelta("1D")] * 7).dt.as_unit("us"),
        }
    )
    write_validated_labels(feed, validated, "cb-1")
    new = old.iloc[:2].assign(
        transaction_id=["late", "new"],
        event_timestamp=[day + pd.Timedelta("1D") - pd.Timedelta("5min"), day + pd.Timedelta("2D")],
        merchant_id=[10, 11],
    )
    write_partitions(new, validated / "transactions", "tx-2")

    run = IngestedBatches(
        [RawBatch(Path("tx-2.parquet"), "tx-2", "")], {}, rows=2, start=new["event_timestamp"].min()
    )
    inputs = load_feature_inputs.fn(settings, run, pd.Timedelta("1D"), "tx-2")

    labels = pd.concat(list(inputs.labels), ignore_index=True)  # read file by file, where the task runs
    assert sorted(labels["transaction_id"]) == sorted(feed["transaction_id"])
    assert labels.set_index("transaction_id").at["late", "merchant_id"] == 10
    risk = compute_merchant_risk(inputs.labels, np.array([10, 11]), inputs.snapshots)
    latest = risk[risk["event_timestamp"] == inputs.snapshots[-1]].set_index("merchant_id")
    assert latest["merchant_labeled_txn_30d"].to_dict() == {10: 4, 11: 3}
    assert latest.at[10, "merchant_fraud_rate_30d"] > latest.at[11, "merchant_fraud_rate_30d"]
    assert read_labels(validated, known_by=day + pd.Timedelta("12h")).empty  # not arrived yet at noon
