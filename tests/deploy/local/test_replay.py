"""The demo's replay: waves hold no entity twice and keep the transactions' order."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from deploy.local.replay import request_bodies, waves


def test_waves_keep_order_and_never_repeat_a_customer_or_merchant() -> None:
    rng = np.random.default_rng(0)
    n = 2_000
    frame = pd.DataFrame(
        {
            "transaction_id": [f"t{i}" for i in range(n)],
            "event_timestamp": pd.Timestamp("2026-01-05", tz="UTC")
            + pd.to_timedelta(rng.integers(0, 86_400, n), "s"),
            "customer_id": rng.integers(1, 300, n),
            "merchant_id": rng.integers(1, 40, n),
        }
    )
    parts = list(waves(frame))
    joined = pd.concat(parts)
    assert (
        joined["transaction_id"].tolist()
        == frame.sort_values("event_timestamp", kind="stable")["transaction_id"].tolist()
    )
    for part in parts:
        assert part["customer_id"].is_unique and part["merchant_id"].is_unique
    # Greedy: each wave ends only where the next transaction repeats one of its entities.
    for part, following in itertools.pairwise(parts):
        first = following.iloc[0]
        assert first["customer_id"] in set(part["customer_id"]) or first["merchant_id"] in set(
            part["merchant_id"]
        )


def test_request_bodies_are_what_the_api_takes() -> None:
    frame = pd.DataFrame(
        {
            "transaction_id": ["a"],
            "event_timestamp": [pd.Timestamp("2026-01-05 10:00", tz="UTC")],
            "customer_id": [1],
            "merchant_id": [2],
            "amount": [3.5],
            "channel": ["chip"],
            "is_fraud": [0],
        }
    )
    assert request_bodies(frame) == [
        {
            "transaction_id": "a",
            "customer_id": 1,
            "merchant_id": 2,
            "amount": 3.5,
            "timestamp": "2026-01-05T10:00:00+00:00",
            "channel": "chip",
        }
    ]
