"""Data tests of the transaction generator: contract, determinism, label model, seasonality and drift."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flows.fraud_data.generator import (
    DriftSpec,
    GeneratorConfig,
    RawData,
    generate_raw_data,
    main,
    solve_intercept,
    split_labels,
    write_labels,
    write_raw_data,
)
from flows.fraud_data.schema import CARD_TYPES, CHANNELS, MAX_AMOUNT, MERCHANT_CATEGORIES, REGIONS
from model_store.settings import Settings

SMALL = {"n_transactions": 30_000, "n_customers": 2_000, "n_merchants": 200}
DRIFT_START = pd.Timestamp("2026-02-15", tz="UTC")

TRANSACTION_DTYPES = {
    "transaction_id": "object",
    "event_timestamp": "datetime64[us, UTC]",
    "customer_id": "int64",
    "merchant_id": "int64",
    "amount": "float64",
    "channel": "object",
    "is_fraud": "int64",
    "label_timestamp": "datetime64[us, UTC]",
    "oracle_probability": "float64",
}
CUSTOMER_DTYPES = {
    "customer_id": "int64",
    "account_created_at": "datetime64[us, UTC]",
    "home_region": "object",
    "card_type": "object",
    "credit_limit": "float64",
}
MERCHANT_DTYPES = {
    "merchant_id": "int64",
    "onboarded_at": "datetime64[us, UTC]",
    "merchant_category": "object",
    "merchant_region": "object",
}


@pytest.fixture(scope="module")
def config() -> GeneratorConfig:
    return GeneratorConfig(**SMALL)


@pytest.fixture(scope="module")
def data(config: GeneratorConfig) -> RawData:
    return generate_raw_data(config)


@pytest.fixture(scope="module")
def enriched(data: RawData) -> pd.DataFrame:
    """Transactions with what the direction tests group by: gap, hour, account age, foreign merchant."""
    tx = data.transactions.merge(data.customers, on="customer_id").merge(data.merchants, on="merchant_id")
    tx = tx.sort_values(["customer_id", "event_timestamp"], kind="stable")
    tx["gap_s"] = tx.groupby("customer_id")["event_timestamp"].diff().dt.total_seconds()
    tx["hour"] = tx["event_timestamp"].dt.hour
    tx["account_age_days"] = (tx["event_timestamp"] - tx["account_created_at"]).dt.total_seconds() / 86_400
    return tx


def frame_digest(frame: pd.DataFrame) -> str:
    return hashlib.sha256(pd.util.hash_pandas_object(frame, index=True).to_numpy().tobytes()).hexdigest()


def test_same_seed_gives_identical_frames(config: GeneratorConfig, data: RawData) -> None:
    again = generate_raw_data(config)
    for name in ("customers", "merchants", "transactions"):
        pd.testing.assert_frame_equal(getattr(data, name), getattr(again, name), check_exact=True)
        assert frame_digest(getattr(data, name)) == frame_digest(getattr(again, name))


def test_a_start_whole_weeks_later_gives_the_same_data_shifted(
    config: GeneratorConfig, data: RawData
) -> None:
    """What makes the demo repeat itself: traffic follows the hour and the weekday, nothing else of the date."""
    weeks = pd.Timedelta(weeks=3)
    later = generate_raw_data(GeneratorConfig(**SMALL, start=config.start + weeks))
    for name in ("customers", "merchants", "transactions"):
        frame = getattr(later, name).copy()
        for column in frame.select_dtypes(include="datetimetz").columns:
            frame[column] = (frame[column] - weeks).astype(frame[column].dtype)
        pd.testing.assert_frame_equal(frame, getattr(data, name), check_exact=True)
    # A day later is other traffic: the weekly profile moved under it.
    day_later = generate_raw_data(GeneratorConfig(**SMALL, start=config.start + pd.Timedelta(days=1)))
    assert not day_later.transactions["amount"].equals(data.transactions["amount"])


def test_other_seed_gives_other_data_and_disjoint_ids(data: RawData) -> None:
    other = generate_raw_data(GeneratorConfig(**SMALL, seed=7))
    assert not other.transactions["amount"].equals(data.transactions["amount"])
    assert not other.customers["credit_limit"].equals(data.customers["credit_limit"])
    shared = set(other.transactions["transaction_id"]) & set(data.transactions["transaction_id"])
    assert not shared


def test_columns_and_dtypes_match_the_raw_contract(data: RawData) -> None:
    assert {c: str(t) for c, t in data.transactions.dtypes.items()} == TRANSACTION_DTYPES
    assert {c: str(t) for c, t in data.customers.dtypes.items()} == CUSTOMER_DTYPES
    assert {c: str(t) for c, t in data.merchants.dtypes.items()} == MERCHANT_DTYPES
    assert list(data.transactions.columns) == list(TRANSACTION_DTYPES)


def test_values_follow_the_vocabulary_and_rules(config: GeneratorConfig, data: RawData) -> None:
    tx, customers, merchants = data.transactions, data.customers, data.merchants
    assert len(tx) == config.n_transactions
    assert set(tx["channel"]) == set(CHANNELS)
    assert set(customers["home_region"]) <= set(REGIONS)
    assert set(customers["card_type"]) == set(CARD_TYPES)
    assert set(merchants["merchant_category"]) == set(MERCHANT_CATEGORIES)
    assert set(merchants["merchant_region"]) == set(REGIONS)
    assert (customers["credit_limit"] > 0).all()
    assert tx["amount"].gt(0).all() and tx["amount"].le(MAX_AMOUNT).all()
    cents = tx["amount"].to_numpy() * 100
    assert np.allclose(cents, np.round(cents), atol=1e-6)
    assert set(tx["is_fraud"].unique()) == {0, 1}
    assert tx["oracle_probability"].between(0, 1, inclusive="neither").all()
    assert tx["event_timestamp"].is_monotonic_increasing
    assert tx["event_timestamp"].min() >= config.start and tx["event_timestamp"].max() < config.end


def test_ids_are_unique_and_referentially_valid(data: RawData) -> None:
    tx = data.transactions
    assert tx["transaction_id"].is_unique
    assert data.customers["customer_id"].is_unique and data.customers["customer_id"].gt(0).all()
    assert data.merchants["merchant_id"].is_unique and data.merchants["merchant_id"].gt(0).all()
    assert tx["customer_id"].isin(data.customers["customer_id"]).all()
    assert tx["merchant_id"].isin(data.merchants["merchant_id"]).all()


def test_transactions_happen_after_the_account_opens_and_the_merchant_onboards(
    enriched: pd.DataFrame,
) -> None:
    assert (enriched["event_timestamp"] >= enriched["account_created_at"]).all()
    assert (enriched["event_timestamp"] > enriched["onboarded_at"]).all()


def test_accounts_span_years_and_some_open_during_the_period(config: GeneratorConfig, data: RawData) -> None:
    created = data.customers["account_created_at"]
    assert created.min() < config.start - pd.Timedelta(days=3 * 365)
    opened_in_period = created.between(config.start, config.end).mean()
    assert 0.02 < opened_in_period < 0.08
    assert (data.merchants["onboarded_at"] < config.start).all()


def test_prevalence_is_within_bounds(data: RawData) -> None:
    assert 0.008 <= data.transactions["is_fraud"].mean() <= 0.012


def test_oracle_is_calibrated_and_ranks_fraud(config: GeneratorConfig, data: RawData) -> None:
    tx = data.transactions
    assert tx["oracle_probability"].mean() == pytest.approx(config.fraud_rate, abs=1e-9)
    assert abs(tx["oracle_probability"].mean() - tx["is_fraud"].mean()) < 0.002
    decile = pd.qcut(tx["oracle_probability"], 10, labels=False)
    by_decile = tx.groupby(decile)["is_fraud"].mean()
    assert by_decile[9] > 8 * max(by_decile[0], 1 / len(tx))
    assert by_decile[9] > 3 * tx["is_fraud"].mean()


def test_solve_intercept_hits_the_target_rate() -> None:
    score = np.random.default_rng(0).normal(0, 2, 10_000)
    b0 = solve_intercept(score, 0.02)
    assert np.mean(1 / (1 + np.exp(-(b0 + score)))) == pytest.approx(0.02, abs=1e-9)


def test_labels_arrive_after_events_with_the_configured_delays(
    config: GeneratorConfig, data: RawData
) -> None:
    tx = data.transactions
    delay_days = (tx["label_timestamp"] - tx["event_timestamp"]).dt.total_seconds() / 86_400
    assert (delay_days >= 0).all()
    legit, fraud = delay_days[tx["is_fraud"] == 0], delay_days[tx["is_fraud"] == 1]
    assert np.allclose(legit, config.legit_label_delay_days)
    assert fraud.between(1, config.chargeback_delay_max_days).all()
    assert fraud.std() > 1  # chargebacks take days to weeks, not a constant
    assert (tx["label_timestamp"] > config.end).any()  # late labels spill past the period


def test_fraud_is_more_frequent_in_velocity_bursts(enriched: pd.DataFrame) -> None:
    in_burst = enriched["gap_s"] < 600
    assert in_burst.sum() > 300  # bursts are real sequences of transactions
    assert enriched.loc[in_burst, "is_fraud"].mean() > 4 * enriched.loc[~in_burst, "is_fraud"].mean()


def test_fraud_is_more_frequent_at_night(enriched: pd.DataFrame) -> None:
    night = enriched["hour"] < 6
    assert enriched.loc[night, "is_fraud"].mean() > 2 * enriched.loc[~night, "is_fraud"].mean()


def test_fraud_is_more_frequent_for_new_accounts(enriched: pd.DataFrame) -> None:
    new = enriched["account_age_days"] < 30
    assert new.sum() > 200
    assert enriched.loc[new, "is_fraud"].mean() > 2 * enriched.loc[~new, "is_fraud"].mean()


def test_fraud_is_more_frequent_online_and_abroad(enriched: pd.DataFrame) -> None:
    online = enriched["channel"] == "online"
    foreign = enriched["home_region"] != enriched["merchant_region"]
    assert enriched.loc[online, "is_fraud"].mean() > 2 * enriched.loc[~online, "is_fraud"].mean()
    assert enriched.loc[foreign, "is_fraud"].mean() > 1.5 * enriched.loc[~foreign, "is_fraud"].mean()


def test_amounts_depend_on_category_and_customer(enriched: pd.DataFrame) -> None:
    median = enriched.groupby("merchant_category")["amount"].median()
    assert median["travel"] > 5 * median["grocery"]
    assert median["electronics"] > 3 * median["restaurants"]
    high_limit = enriched["credit_limit"] > enriched["credit_limit"].quantile(0.8)
    low_limit = enriched["credit_limit"] < enriched["credit_limit"].quantile(0.2)
    grocery = enriched["merchant_category"] == "grocery"
    assert (
        enriched.loc[grocery & high_limit, "amount"].median()
        > 1.5 * enriched.loc[grocery & low_limit, "amount"].median()
    )


def test_traffic_is_quieter_at_night_and_follows_the_week(data: RawData) -> None:
    ts = data.transactions["event_timestamp"]
    per_hour = ts.dt.hour.value_counts().reindex(range(24), fill_value=0)
    assert per_hour.loc[0:5].mean() < 0.4 * per_hour.loc[9:20].mean()
    per_weekday = ts.dt.dayofweek.value_counts()
    assert per_weekday[5] > 1.2 * per_weekday[6]  # Saturday busier than Sunday


def drifted(spec: DriftSpec) -> RawData:
    return generate_raw_data(GeneratorConfig(**SMALL, drift=spec))


def test_drift_changes_nothing_before_its_start(data: RawData) -> None:
    shifted = drifted(DriftSpec(DRIFT_START, amount_inflation=1.3, channel_shift=0.5, new_fraud_pattern=True))
    before = data.transactions[data.transactions["event_timestamp"] < DRIFT_START]
    shifted_before = shifted.transactions[shifted.transactions["event_timestamp"] < DRIFT_START]
    pd.testing.assert_frame_equal(before, shifted_before, check_exact=True)
    pd.testing.assert_frame_equal(data.customers, shifted.customers, check_exact=True)


def test_drift_starting_after_the_period_changes_nothing(config: GeneratorConfig, data: RawData) -> None:
    late = drifted(DriftSpec(config.end, amount_inflation=2.0, channel_shift=1.0, new_fraud_pattern=True))
    pd.testing.assert_frame_equal(late.transactions, data.transactions, check_exact=True)


def test_amount_inflation_applies_from_the_drift_start(data: RawData) -> None:
    shifted = drifted(DriftSpec(DRIFT_START, amount_inflation=1.3))
    after = data.transactions["event_timestamp"] >= DRIFT_START
    ratio = shifted.transactions.loc[after, "amount"] / data.transactions.loc[after, "amount"]
    assert ratio.median() == pytest.approx(1.3, abs=0.01)
    assert ratio.between(1.29, 1.31).mean() > 0.99  # all but rounding and the cap
    pd.testing.assert_series_equal(shifted.transactions["channel"], data.transactions["channel"])


def test_channel_shift_moves_card_present_transactions_online(data: RawData) -> None:
    shifted = drifted(DriftSpec(DRIFT_START, channel_shift=0.5))
    after = data.transactions["event_timestamp"] >= DRIFT_START
    was_card_present = after & (data.transactions["channel"] != "online")
    moved = (shifted.transactions.loc[was_card_present, "channel"] == "online").mean()
    assert moved == pytest.approx(0.5, abs=0.02)
    assert (shifted.transactions.loc[after & ~was_card_present, "channel"] == "online").all()
    # The oracle stays the true probability: more online traffic, more fraud expected.
    assert (
        shifted.transactions.loc[after, "oracle_probability"].mean()
        > data.transactions.loc[after, "oracle_probability"].mean()
    )


def test_new_fraud_pattern_adds_daytime_card_testing_after_the_start(data: RawData) -> None:
    shifted = drifted(DriftSpec(DRIFT_START, new_fraud_pattern=True))
    keys = ["event_timestamp", "customer_id", "merchant_id", "amount"]
    both = shifted.transactions.merge(data.transactions[keys], on=keys, how="left", indicator=True)
    added = both[both["_merge"] == "left_only"].merge(shifted.merchants, on="merchant_id")
    assert len(added) == len(shifted.transactions) - len(data.transactions) > 20
    assert (added["event_timestamp"] >= DRIFT_START).all()
    assert (added["merchant_category"] == "digital_goods").all() and (added["channel"] == "online").all()
    assert added["amount"].lt(5).all()
    assert added["event_timestamp"].dt.hour.between(9, 17).all()
    assert added.groupby("customer_id").size().min() >= 3  # bursts, not single purchases
    assert added["is_fraud"].mean() > 0.4
    tx = data.transactions.merge(data.merchants, on="merchant_id")
    small_digital_before = tx[(tx["merchant_category"] == "digital_goods") & (tx["amount"] < 5)]
    assert small_digital_before["is_fraud"].mean() < 0.1


@pytest.fixture(scope="module")
def slices(config: GeneratorConfig) -> list[RawData]:
    """The small config generated in three slices of 30 days, the last two drifted."""
    drifted = replace(config, drift=DriftSpec(DRIFT_START, amount_inflation=1.3, new_fraud_pattern=True))
    return [generate_raw_data(drifted, part, 3) for part in range(3)]


def test_slices_share_the_population_of_the_whole_set(config: GeneratorConfig, data: RawData, slices) -> None:
    for piece in slices:
        pd.testing.assert_frame_equal(piece.customers, data.customers)
        pd.testing.assert_frame_equal(piece.merchants, data.merchants)


def test_slices_tile_the_period_with_unique_ids(config: GeneratorConfig, slices: list[RawData]) -> None:
    bounds = [config.start + pd.Timedelta(days=30 * k) for k in range(4)]
    for piece, start, end in zip(slices, bounds, bounds[1:], strict=False):
        assert piece.transactions["event_timestamp"].between(start, end, inclusive="left").all()
        tx = piece.transactions.merge(piece.customers, on="customer_id")
        assert (tx["event_timestamp"] >= tx["account_created_at"]).all()
    ids = pd.concat([piece.transactions["transaction_id"] for piece in slices])
    assert ids.is_unique
    # The base traffic is split exactly; the drift's card testing comes on top, in the drifted slices only.
    assert len(slices[0].transactions) == config.n_transactions // 3
    assert len(ids) > config.n_transactions


def test_a_customer_keeps_their_habits_from_slice_to_slice(slices: list[RawData]) -> None:
    # Slices drawn from populations of their own (as separate seeds would) put no relation between a card's
    # amounts or activity in one slice and the next (measured: -0.03 for amounts); the shared population keeps
    # each card's spend level (0.48) and activity (0.73).
    for statistic in ("median", "size"):
        first, second = (
            piece.transactions.groupby("customer_id")["amount"].agg(statistic) for piece in slices[:2]
        )
        both = pd.concat([np.log(first), np.log(second)], axis=1, join="inner")
        assert len(both) > 1_000
        assert both.corr().iloc[0, 1] > 0.3, statistic


def test_a_slice_draws_no_customer_whose_account_opens_after_it(config: GeneratorConfig) -> None:
    # Most accounts open during the period, so many of the first slice's draws fall on accounts not yet open.
    early = generate_raw_data(replace(config, new_account_share=0.9), 0, 3)
    tx = early.transactions.merge(early.customers, on="customer_id")
    assert (tx["event_timestamp"] >= tx["account_created_at"]).all()
    assert tx["event_timestamp"].between(config.start, config.start + pd.Timedelta(days=30), "left").all()


def test_slices_reject_a_part_outside_or_a_period_they_do_not_divide(config: GeneratorConfig) -> None:
    with pytest.raises(ValueError, match="part must be within"):
        generate_raw_data(config, 3, 3)
    with pytest.raises(ValueError, match="must divide days"):
        generate_raw_data(config, 0, 7)


def test_write_raw_data_round_trips_the_contract(tmp_path: Path, data: RawData) -> None:
    paths = write_raw_data(data, tmp_path / "raw", "batch-001")
    assert [p.relative_to(tmp_path / "raw").as_posix() for p in paths] == [
        "customers.parquet",
        "merchants.parquet",
        "transactions/batch-001.parquet",
    ]
    back = pd.read_parquet(paths[2])
    pd.testing.assert_frame_equal(back, data.transactions, check_exact=True)
    assert {c: str(t) for c, t in pd.read_parquet(paths[0]).dtypes.items()} == CUSTOMER_DTYPES
    first_bytes = paths[2].read_bytes()
    write_raw_data(data, tmp_path / "raw", "batch-001")
    assert paths[2].read_bytes() == first_bytes  # deterministic files, overwritten in place
    assert sorted(p.name for p in (tmp_path / "raw").rglob("*")) == sorted(
        ["customers.parquet", "merchants.parquet", "transactions", "batch-001.parquet"]
    )


def test_split_labels_leaves_transactions_unlabelled_and_loses_no_label(data: RawData) -> None:
    unlabelled, labels = split_labels(data.transactions)

    label_columns = ["is_fraud", "label_timestamp"]
    pd.testing.assert_frame_equal(
        unlabelled.drop(columns=label_columns),
        data.transactions.drop(columns=label_columns),
        check_exact=True,
    )
    assert unlabelled["is_fraud"].isna().all() and unlabelled["label_timestamp"].isna().all()
    assert unlabelled["label_timestamp"].dtype == data.transactions["label_timestamp"].dtype
    assert list(labels.columns) == ["transaction_id", *label_columns]
    assert labels["label_timestamp"].is_monotonic_increasing  # in order of arrival, as a feed sends them
    back = unlabelled.drop(columns=label_columns).merge(labels, on="transaction_id", validate="1:1")
    pd.testing.assert_frame_equal(back[list(data.transactions.columns)], data.transactions, check_exact=True)


def test_labels_written_on_their_own_round_trip(tmp_path: Path, data: RawData) -> None:
    unlabelled, labels = split_labels(data.transactions)
    paths = write_raw_data(
        RawData(data.customers, data.merchants, unlabelled, labels), tmp_path / "raw", "batch-001"
    )
    assert [p.relative_to(tmp_path / "raw").as_posix() for p in paths] == [
        "customers.parquet",
        "merchants.parquet",
        "transactions/batch-001.parquet",
        "labels/batch-001.parquet",
    ]
    pd.testing.assert_frame_equal(pd.read_parquet(paths[2]), unlabelled, check_exact=True)
    pd.testing.assert_frame_equal(pd.read_parquet(paths[3]), labels, check_exact=True)

    arrived = labels[labels["label_timestamp"] <= data.transactions["event_timestamp"].max()]
    feed = write_labels(arrived, tmp_path / "raw", "chargebacks-0001")
    assert feed == tmp_path / "raw" / "labels" / "chargebacks-0001.parquet"
    pd.testing.assert_frame_equal(pd.read_parquet(feed), arrived, check_exact=True)
    with pytest.raises(ValueError, match=r"name '\.\./x' must be a plain file name"):
        write_labels(arrived, tmp_path / "raw", "../x")


@pytest.mark.parametrize("bad_name", ["", "../escape", "a/b", ".hidden"])
def test_write_raw_data_rejects_unsafe_batch_names(tmp_path: Path, data: RawData, bad_name: str) -> None:
    with pytest.raises(ValueError, match="batch_name"):
        write_raw_data(data, tmp_path, bad_name)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"start": pd.Timestamp("2026-01-01")}, "start"),
        ({"n_transactions": 0}, "n_transactions"),
        ({"n_customers": -5}, "n_customers"),
        ({"fraud_rate": 0.0}, "fraud_rate"),
        ({"burst_share": 0.7}, "burst_share"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        GeneratorConfig(**overrides)


def test_drift_spec_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="channel_shift"):
        DriftSpec(DRIFT_START, channel_shift=1.5)
    with pytest.raises(ValueError, match="amount_inflation"):
        DriftSpec(DRIFT_START, amount_inflation=0)
    with pytest.raises(ValueError, match=r"drift\.start"):
        DriftSpec(pd.Timestamp("2026-02-01"))


def test_cli_writes_a_batch_to_the_given_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["--raw-dir", str(tmp_path), "--transactions", "3000", "--customers", "300", "--merchants", "50",
          "--days", "20", "--seed", "5", "--drift-start", "2026-01-10", "--amount-inflation", "1.3"])  # fmt: skip
    out = capsys.readouterr().out
    batch = tmp_path / "transactions" / "2026-01-01_s5.parquet"
    assert str(batch) in out and "3,000 transactions" in out
    tx = pd.read_parquet(batch)
    assert len(tx) == 3000 and tx["transaction_id"].str.startswith("s5-").all()


def test_cli_defaults_to_the_settings_raw_dir(settings: Settings) -> None:
    main(["--transactions", "2000", "--customers", "200", "--merchants", "40", "--days", "10",
          "--batch-name", "first"])  # fmt: skip
    assert (settings.raw_dir / "transactions" / "first.parquet").exists()
    assert (settings.raw_dir / "customers.parquet").exists()


def test_cli_rejects_drift_knobs_without_a_drift_start(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="drift-start"):
        main(["--raw-dir", str(tmp_path), "--channel-shift", "0.3"])
