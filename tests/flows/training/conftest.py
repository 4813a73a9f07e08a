"""A synthetic training set with a known signal, for model, tuning and evaluation tests without Feast."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from flows.training.dataset import FeatureSpec, TrainingSet, split_by_time


def make_training_set(rows: int = 6000, seed: int = 0) -> TrainingSet:
    """Fraud driven by amount, velocity and channel, with the true probability as the oracle."""
    rng = np.random.default_rng(seed)
    channel = rng.choice(["chip", "contactless", "online"], rows, p=[0.5, 0.3, 0.2])
    category = rng.choice(["grocery", "travel", "gaming"], rows)
    log_amount = rng.normal(3.5, 1.0, rows)
    velocity = rng.poisson(2, rows).astype(float)
    noise = rng.normal(size=rows)
    logit = (
        -6.5
        + 1.5 * (log_amount - 3.5)
        + 0.9 * velocity
        + 2.0 * (channel == "online")
        + 1.2 * (category == "gaming")
    )
    probability = 1 / (1 + np.exp(-logit))
    frame = pd.DataFrame(
        {
            "transaction_id": [f"t{i:06d}" for i in range(rows)],
            "event_timestamp": pd.date_range("2026-01-01", periods=rows, freq="7min", tz="UTC"),
            "log_amount": log_amount,
            "velocity": velocity,
            "noise": noise,
            "channel": channel,
            "merchant_category": category,
            "is_fraud": (rng.random(rows) < probability).astype(np.int64),
            "oracle_probability": probability,
        }
    )
    frame.loc[frame.index % 17 == 0, "velocity"] = np.nan  # missing history, as for new customers
    spec = FeatureSpec(
        "synthetic_v1",
        ["log_amount", "velocity", "noise", "channel", "merchant_category"],
        ["channel", "merchant_category"],
        [],
    )
    train, validation, test, split = split_by_time(frame, 0.2, 0.25)
    return TrainingSet(spec, train, validation, test, split, split.end, {"rows": {}})


@pytest.fixture(scope="session")
def synthetic_data() -> TrainingSet:
    return make_training_set()
