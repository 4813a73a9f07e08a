"""Drift detection quality and cost: detection and false-alarm rates per kind of drift, profiling throughput.

Run: `.venv/bin/python tests/benchmarks/bench_drift.py [--seeds 3] [--days 60]` (make bench runs it).

For each seed the generator produces the default traffic (about 11k transactions a day) without drift and
with each drift of known size starting on day 30 (drifted data is identical to the clean data before it).
Model-feature-like columns are computed straight from the generated frames (the project's vectorized activity
features, shifted so a row sees the state before its own transaction, plus request and profile features): the
full Feast pipeline would add minutes without changing the distributions. A gradient-boosting model trained
on days 7-22 scores every row; the reference profile is the training rows' features with the model's scores on
the holdout (days 23-29), as the training flow logs it. Each day from day 30 on is one window at the default
size (24 h) judged by the drift flow's own code; the performance monitor judges the same windows with every
label known. A drift "matters" when it hurts the model: its false-positive alert rate (legitimate rows at or
above the threshold set at 1 % false positives on the holdout) rises by more than 20 %, or its PR-AUC falls by
more than 5 %, against the same days of the same data without drift (paired: drift rewrites the rows of the
undrifted process, so the difference is the drift's alone).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import warnings
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("WHYLOGS_NO_ANALYTICS", "1")

from flows.fraud_data.generator import DriftSpec, GeneratorConfig, generate_raw_data  # noqa: E402
from flows.monitoring.drift import DriftThresholds, detect_drift  # noqa: E402
from flows.monitoring.performance import PerformanceThresholds, measure_performance  # noqa: E402
from flows.monitoring.whylogs_backend import WhylogsBackend  # noqa: E402
from model_store import libraries  # noqa: E402
from model_store.profiles import profile_frame  # noqa: E402
from model_store.scorer import MISSING_CATEGORY  # noqa: E402
from services.stream.windows import compute_windows  # noqa: E402
from tests.fixtures.feature_repo import declared_windowed_views  # noqa: E402

DRIFT_START_DAY = 30
DRIFTED_DAYS = 15
MATTERS_FP_RISE = 0.20
MATTERS_PR_AUC_FALL = (
    0.05  # windows per drifted data set (the clean one gives every day from DRIFT_START_DAY on)
)
ACTIVITY_TTL = pd.Timedelta(days=7)
TRAIN_DAYS = (7, 23)  # after the 7-day warm-up of the activity features
HOLDOUT_DAYS = (23, 30)
CATEGORICAL = ["channel", "home_region", "card_type", "merchant_category"]
DRIFTS: dict[str, dict[str, object]] = {
    "clean": {},
    "amount x1.10": {"amount_inflation": 1.10},
    "amount x1.25": {"amount_inflation": 1.25},
    "amount x1.50": {"amount_inflation": 1.50},
    "online +5%": {"channel_shift": 0.05},
    "online +10%": {"channel_shift": 0.10},
    "online +20%": {"channel_shift": 0.20},
    "card testing": {"new_fraud_pattern": True},
}


@dataclass
class Window:
    """One day of one generated data set: its features with scores, and labels."""

    day: int
    frame: pd.DataFrame
    y: np.ndarray


def model_features(raw: object) -> pd.DataFrame:
    """Model-like inputs per transaction, as of just before it, with its day index and label."""
    tx = raw.transactions.reset_index(drop=True)
    customers = raw.customers.set_index("customer_id")
    merchants = raw.merchants.set_index("merchant_id")
    ts = tx["event_timestamp"]
    created = pd.to_datetime(customers["account_created_at"].reindex(tx["customer_id"]).to_numpy(), utc=True)
    frame = pd.DataFrame(
        {
            "transaction_id": tx["transaction_id"],
            "customer_id": tx["customer_id"],
            "merchant_id": tx["merchant_id"],
            "event_timestamp": ts,
            "amount": tx["amount"],
            "channel": tx["channel"].astype(object),
            "hour_of_day": ts.dt.hour.astype("int64"),
            "is_night": (ts.dt.hour < 6).astype("int64"),
            "home_region": customers["home_region"].reindex(tx["customer_id"]).to_numpy(),
            "card_type": customers["card_type"].reindex(tx["customer_id"]).to_numpy(),
            "credit_limit": customers["credit_limit"].reindex(tx["customer_id"]).to_numpy(),
            "account_age_days": (ts - pd.Series(created)).dt.total_seconds() / 86400,
            "merchant_category": merchants["merchant_category"].reindex(tx["merchant_id"]).to_numpy(),
        }
    )
    merchant_region = merchants["merchant_region"].reindex(tx["merchant_id"]).to_numpy()
    frame["is_foreign_merchant"] = (merchant_region != frame["home_region"].to_numpy()).astype("int64")
    views = declared_windowed_views()
    customer = previous_state(frame, compute_windows(views["customer_activity"], tx), "customer_id")
    for column in (
        "txn_count_1h",
        "txn_count_24h",
        "amount_sum_24h",
        "amount_mean_7d",
        "distinct_merchants_24h",
    ):
        frame[column] = customer[column]
    frame["seconds_since_prev_txn"] = customer["seconds_since_prev_txn"]
    frame["amount_to_mean_7d"] = frame["amount"] / customer["amount_mean_7d"]
    merchant = previous_state(frame, compute_windows(views["merchant_activity"], tx), "merchant_id")
    for column in ("merchant_txn_count_24h", "merchant_amount_mean_24h"):
        frame[column] = merchant[column]
    start = ts.min().floor("D")
    frame["day"] = ((ts - start) // pd.Timedelta("1D")).astype("int64")
    frame["is_fraud"] = tx["is_fraud"].to_numpy()
    return frame


def previous_state(frame: pd.DataFrame, activity: pd.DataFrame, key: str) -> pd.DataFrame:
    """The key's activity row of its previous transaction, as the online store holds it at scoring time:
    nothing when that transaction is older than the feature view's 7-day TTL."""
    activity = activity.assign(event_timestamp=activity["event_timestamp"] - pd.Timedelta("1ms"))
    activity = activity.drop_duplicates([key, "event_timestamp"], keep="last")
    joined = frame[[key, "event_timestamp"]].merge(activity, on=[key, "event_timestamp"], how="left")
    joined["_row"] = np.arange(len(joined))
    joined = joined.sort_values([key, "event_timestamp"], kind="stable")
    value_columns = [c for c in activity.columns if c not in (key, "event_timestamp")]
    grouped = joined.groupby(key, sort=False)
    previous_time = grouped["event_timestamp"].shift(1)
    joined[value_columns] = grouped[value_columns].shift(1)
    expired = ~(joined["event_timestamp"] - previous_time <= ACTIVITY_TTL)
    joined.loc[expired, value_columns] = np.nan
    return joined.sort_values("_row").reset_index(drop=True)


FEATURES = [
    "amount", "channel", "hour_of_day", "is_night", "home_region", "card_type", "credit_limit",
    "account_age_days", "merchant_category", "is_foreign_merchant", "txn_count_1h", "txn_count_24h",
    "amount_sum_24h", "amount_mean_7d", "distinct_merchants_24h", "seconds_since_prev_txn",
    "amount_to_mean_7d", "merchant_txn_count_24h", "merchant_amount_mean_24h",
]  # fmt: skip


def train_model(frame: pd.DataFrame) -> object:
    from sklearn.ensemble import HistGradientBoostingClassifier

    rows = frame[frame["day"].between(TRAIN_DAYS[0], TRAIN_DAYS[1] - 1)]
    return HistGradientBoostingClassifier(
        max_iter=150, learning_rate=0.08, categorical_features="from_dtype", random_state=0
    ).fit(model_input(rows), rows["is_fraud"])


def model_input(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame[FEATURES].copy()
    for column in CATEGORICAL:
        out[column] = pd.Categorical(out[column].fillna(MISSING_CATEGORY), categories=CATEGORIES[column])
    return out


CATEGORIES: dict[str, list[str]] = {}


def threshold_at_fpr(y: np.ndarray, scores: np.ndarray, fpr: float) -> float:
    negatives = np.sort(scores[y == 0])[::-1]
    return float(np.nextafter(negatives[int(fpr * len(negatives))], np.inf))


def run_seed(seed: int, days: int, figures: dict[str, list], thresholds: DriftThresholds) -> None:
    from sklearn.metrics import average_precision_score

    base = GeneratorConfig(
        n_transactions=round(1_000_000 * days / 90),
        days=days,
        seed=seed,
        start=pd.Timestamp("2026-01-01", tz="UTC"),
    )
    started = time.perf_counter()
    clean = model_features(generate_raw_data(base))
    for column in CATEGORICAL:
        CATEGORIES.setdefault(column, sorted({*clean[column].dropna().unique(), MISSING_CATEGORY}))
    model = train_model(clean)
    holdout = clean[clean["day"].between(HOLDOUT_DAYS[0], HOLDOUT_DAYS[1] - 1)]
    holdout_scores = model.predict_proba(model_input(holdout))[:, 1]
    holdout_y = holdout["is_fraud"].to_numpy()
    threshold = threshold_at_fpr(holdout_y, holdout_scores, 0.01)
    holdout_figures = {
        "pr_auc": float(average_precision_score(holdout_y, holdout_scores)),
        "recall": float((holdout_scores[holdout_y == 1] >= threshold).mean()),
    }
    train_rows = clean[clean["day"].between(TRAIN_DAYS[0], TRAIN_DAYS[1] - 1)]
    reference = profile_frame(train_rows[FEATURES]).merge(
        profile_frame(pd.DataFrame({"score": holdout_scores}))
    )
    print(
        f"seed {seed}: {len(clean):,} rows, holdout PR-AUC {holdout_figures['pr_auc']:.3f}, "
        f"recall@1%FPR {holdout_figures['recall']:.3f} (set-up {time.perf_counter() - started:.0f} s)",
        flush=True,
    )
    shorter = replace(
        base,
        days=DRIFT_START_DAY + DRIFTED_DAYS,
        n_transactions=round(base.n_transactions * (DRIFT_START_DAY + DRIFTED_DAYS) / days),
    )
    # The paired baseline: the shorter data set without drift has the same rows the drifted ones start from.
    paired = judge_windows(
        model_features(generate_raw_data(shorter)), model, reference, threshold, holdout_figures, thresholds
    )
    for name, knobs in DRIFTS.items():
        if knobs:
            spec = DriftSpec(start=base.start + pd.Timedelta(days=DRIFT_START_DAY), **knobs)
            data = model_features(generate_raw_data(replace(shorter, drift=spec)))
        else:
            data = clean
        for window in judge_windows(data, model, reference, threshold, holdout_figures, thresholds).values():
            baseline = paired.get(window["day"]) if knobs else None
            if baseline is not None:
                window["fp_rate_change"] = window["fp_rate"] / baseline["fp_rate"] - 1
                window["pr_auc_change"] = window["pr_auc"] / baseline["pr_auc"] - 1
            figures[name].append({"seed": seed, **window})
        print(
            f"  {name:<14} {len(figures[name])} windows so far ({time.perf_counter() - started:.0f} s)",
            flush=True,
        )


def judge_windows(
    data: pd.DataFrame,
    model: object,
    reference: object,
    threshold: float,
    holdout: dict[str, float],
    thresholds: DriftThresholds,
) -> dict[int, dict[str, object]]:
    """Every full day from the drift start on, judged as the drift flow judges a window; keyed by day."""
    from sklearn.metrics import average_precision_score

    backend = WhylogsBackend()
    data = data[data["day"] >= DRIFT_START_DAY]
    data = data.assign(score=model.predict_proba(model_input(data))[:, 1])
    out: dict[int, dict[str, object]] = {}
    for day, rows in data.groupby("day"):
        if len(rows) < 1000:  # the last, partial day
            continue
        window = (datetime.now(UTC), datetime.now(UTC))
        result = detect_drift(
            backend, reference, profile_frame(rows[[*FEATURES, "score"]]), window, thresholds
        )
        y = rows["is_fraud"].to_numpy()
        flagged = rows["score"].to_numpy() >= threshold
        performance = measure_performance(
            rows[["transaction_id", "event_timestamp", "score", "is_fraud"]],
            threshold,
            holdout,
            window,
            window[1],
            "bench",
            PerformanceThresholds(),
        )
        out[int(day)] = {
            "day": int(day),
            "rows": len(rows),
            "drift": result.status == "drift",
            "features": result.drifted_features,
            "score_drift": result.prediction_drift,
            "decay": performance.decayed,
            "fp_rate": float(flagged[y == 0].mean()),
            "pr_auc": float(average_precision_score(y, rows["score"])),
        }
    return out


def report_quality(figures: dict[str, list]) -> None:
    print(
        "\nDetection quality at the default window (24 h, about 11k rows); reference: days 7-22 / holdout 23-29"
    )
    header = (
        f"{'drift':<14}{'windows':>8}{'FP alerts':>11}{'PR-AUC':>9}{'matters':>9}"
        f"{'drift flag':>12}{'score flag':>12}{'decay flag':>12}  features flagged most"
    )
    print(header)
    print("-" * len(header))
    verdicts = {"false_alarm": None, "detected": [], "missed": []}
    for name in DRIFTS:
        rows = pd.DataFrame(figures[name])
        counts = pd.Series([f for fs in rows["features"] for f in fs]).value_counts()
        top = ", ".join(f"{k} {v / len(rows):.0%}" for k, v in counts.head(3).items())
        if name == "clean":
            fp, pr, matters = "", "", "-"
            verdicts["false_alarm"] = rows["drift"].mean()
        else:
            fp_change, pr_change = rows["fp_rate_change"].mean(), rows["pr_auc_change"].mean()
            important = fp_change > MATTERS_FP_RISE or pr_change < -MATTERS_PR_AUC_FALL
            fp, pr, matters = f"{fp_change:+.0%}", f"{pr_change:+.0%}", "yes" if important else "no"
            if important:
                verdicts["detected" if rows["drift"].mean() >= 0.95 else "missed"].append(name)
        print(
            f"{name:<14}{len(rows):>8}{fp:>11}{pr:>9}{matters:>9}{rows['drift'].mean():>12.1%}"
            f"{rows['score_drift'].mean():>12.1%}{rows['decay'].mean():>12.1%}  {top}"
        )
    print(
        "FP alerts / PR-AUC: change of the model's false-positive alert rate and PR-AUC against the same days "
        f"without drift. A drift matters when FP alerts rise more than {MATTERS_FP_RISE:.0%} or PR-AUC falls more "
        f"than {MATTERS_PR_AUC_FALL:.0%}. drift flag: share of windows the drift flow flags (any feature or the "
        "score); decay flag: the performance monitor with every label known."
    )
    print(
        f"False alarms on clean windows: {verdicts['false_alarm']:.1%} (target <= 5 %). Drifts that matter "
        f"detected in >= 95 % of windows: {', '.join(verdicts['detected']) or 'none'}; below: "
        f"{', '.join(verdicts['missed']) or 'none'}."
    )


def report_cost() -> None:
    rng = np.random.default_rng(0)
    n = 100_000
    frame = pd.DataFrame(
        {
            **{f"num_{i}": rng.normal(size=n) for i in range(15)},
            **{f"cat_{i}": rng.choice(["a", "b", "c", "d"], n).astype(object) for i in range(4)},
            "score": rng.random(n),
        }
    )
    profile_frame(frame.iloc[:1000])  # warm-up
    started = time.perf_counter()
    big = profile_frame(frame)
    bulk = time.perf_counter() - started
    load = os.getloadavg()[0]
    print(
        f"\nProfiling cost ({frame.shape[1]} columns like the model's inputs plus score; load average {load:.1f})"
    )
    print(
        f"  profile_frame on {n:,} rows: {bulk:.2f} s = {n / bulk:,.0f} rows/s; profile {len(big.serialize()) / 1e3:.0f} KB"
    )
    one_row = frame.iloc[:1]
    started = time.perf_counter()
    for _ in range(50):
        profile_frame(one_row)
    single = (time.perf_counter() - started) / 50
    print(f"  profile_frame per request (1 row, unbuffered): {single * 1e3:.1f} ms")
    records = frame.iloc[:10_000].to_dict("records")
    for batch in (100, 1000, 10_000):
        started = time.perf_counter()
        rounds = 0
        while time.perf_counter() - started < 3:
            buffer: list[dict] = []
            for record in records[:batch]:
                buffer.append(record)  # what the request path pays
            profile_frame(pd.DataFrame.from_records(buffer))
            rounds += 1
        per_row = (time.perf_counter() - started) / (rounds * batch)
        print(f"  buffered, profiled every {batch} rows: {per_row * 1e6:.0f} us per request amortized")
    buffer = []
    started = time.perf_counter()
    for record in records:
        buffer.append(record)
    append = (time.perf_counter() - started) / len(records)
    floats = frame[[c for c in frame.columns if c.startswith("num_")]]
    started = time.perf_counter()
    profile_frame(floats)
    per_value = (time.perf_counter() - started) / floats.size
    print(
        f"  float columns alone: {per_value * 1e6:.1f} us per value (their split for NaN and inf is vectorized, model_store/libraries/whylogs.py)"
    )
    print(f"  appending a request to the buffer: {append * 1e9:.0f} ns (the rest runs off the request path)")
    views = [profile_frame(frame.iloc[i : i + 4000]) for i in range(0, 96_000, 4000)]
    started = time.perf_counter()
    merged = views[0]
    for view in views[1:]:
        merged = merged.merge(view)
    print(f"  merging 24 hourly profiles: {(time.perf_counter() - started) * 1e3:.0f} ms")
    backend = WhylogsBackend()
    started = time.perf_counter()
    detect_drift(backend, big, merged, (datetime.now(UTC), datetime.now(UTC)), DriftThresholds())
    print(f"  drift verdicts for {frame.shape[1]} columns: {(time.perf_counter() - started) * 1e3:.0f} ms")


def report_window_reads(requests_per_second: float = 50) -> None:
    """What the drift report pays to read a 24 h window: one profile file per hour per flush of each worker."""
    import tempfile
    import uuid

    from whylogs.core import DatasetProfileView

    from model_store.profiles import ProfileStore, read_profile

    rng = np.random.default_rng(1)
    end = datetime(2026, 1, 2, tzinfo=UTC)
    print(f"\nReading a 24 h window of one worker's traffic log ({requests_per_second:.0f} requests/s)")
    data = profile_frame(
        pd.DataFrame({"amount": rng.normal(size=100), "channel": ["online"] * 100})
    ).serialize()
    timings = {}
    for name, read, code in (
        ("whylogs' own deserialize", DatasetProfileView.deserialize, libraries.whylogs.unpatched()),
        ("read_profile (patched)", read_profile, contextlib.nullcontext()),
    ):
        with code:
            started = time.perf_counter()
            for _ in range(200):
                read(data)
            timings[name] = (time.perf_counter() - started) / 200 * 1e3
    print("  a 2-column profile: " + ", ".join(f"{name} {ms:.2f} ms" for name, ms in timings.items()))
    for flush_seconds in (30, 120, 300):
        rows = int(requests_per_second * flush_seconds)
        frame = pd.DataFrame(
            {
                **{f"num_{i}": rng.normal(size=rows) for i in range(20)},
                **{f"cat_{i}": rng.choice(list("abcdefgh"), rows).astype(object) for i in range(6)},
                "score": rng.random(rows),
            }
        )
        data = profile_frame(frame).serialize()
        per_hour = 3600 // flush_seconds
        with tempfile.TemporaryDirectory() as tmp:
            store = ProfileStore(Path(tmp), "model")
            for hour in range(24):
                folder = store.serving_dir / (end - pd.Timedelta(hours=hour + 1)).strftime("%Y-%m-%dT%H")
                folder.mkdir(parents=True)
                for _ in range(per_hour):
                    (folder / f"{uuid.uuid4().hex}.bin").write_bytes(data)
            started = time.perf_counter()
            store.read_window(end - pd.Timedelta(hours=24), end)
            seconds = time.perf_counter() - started
        print(
            f"  flush every {flush_seconds:>3} s: {24 * per_hour:,} files of {len(data) / 1e3:.0f} KB, read and"
            f" merged in {seconds:.1f} s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2, help="independent data sets")
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--skip-quality", action="store_true", help="only the profiling cost")
    parser.add_argument("--skip-cost", action="store_true", help="only the detection quality")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    libraries.whylogs.apply_patches()  # as the flows and the traffic-log writer do
    if not args.skip_quality:
        figures: dict[str, list] = {name: [] for name in DRIFTS}
        for seed in range(args.seeds):
            run_seed(100 + seed, args.days, figures, DriftThresholds())
        report_quality(figures)
    if not args.skip_cost:
        report_cost()
        report_window_reads()


if __name__ == "__main__":
    main()
