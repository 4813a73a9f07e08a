"""The shadow scorer's handler: which model shadows which decision, on what features, and what it refuses.

Real registry versions scoring real decisions are in tests/services/test_rollout.py; here the models are small
stand-ins whose scores say which rows they were given.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from services.scorer.scoring import FeaturesMismatch, Models
from services.stream.consumer import Entry
from services.stream.events import SHADOW, decision_json, decode, encode, transaction_json
from services.stream.shadow import ShadowScoring

STREAM = "rtml:transactions:test"


@dataclass(frozen=True)
class Contract:
    feature_service: str = "fraud_scorer_v1"


@dataclass
class StandIn:
    """A model that scores a row as its ``amount_z`` feature over 10, and remembers what it was given."""

    version: str
    features: tuple[str, ...] = ("amount_z", "channel")
    name: str = "fraud_scorer"
    threshold: float = 0.5
    contract: Contract = field(default_factory=Contract)
    given: list[dict[str, list[Any]]] = field(default_factory=list)

    def predict(self, columns: dict[str, list[Any]]) -> np.ndarray:
        self.given.append(columns)
        return np.array(columns["amount_z"], dtype=float) / 10

    def decide_one(self, score: float) -> str:
        return "decline" if score >= self.threshold else "approve"


def decided(i: int, version: str, features: dict[str, Any] | None = None) -> Entry:
    from datetime import UTC, datetime

    from services.scorer.transaction import Transaction

    request = Transaction.model_validate(
        {
            "transaction_id": f"t-{i}",
            "customer_id": 1 + i,
            "merchant_id": 7,
            "amount": 12.5,
            "timestamp": "2026-11-01T10:00:00+00:00",
            "channel": "online",
        }
    )
    result = {
        "fraud_probability": 0.1,
        "decision": "approve",
        "threshold": 0.5,
        "model_name": "fraud_scorer",
        "model_version": version,
    }
    inputs = features if features is not None else {"amount_z": float(i), "channel": "online"}
    fields = encode(transaction_json(request), "scorer", decision_json(result, datetime.now(UTC), inputs))
    return Entry(STREAM, f"{i + 1}-0".encode(), fields)


def shadow(champion: StandIn, challenger: StandIn | None, share: float = 1.0) -> ShadowScoring:
    return ShadowScoring(Models(champion, challenger), "rtml:shadow:test", 1000, share)


def scores(effects: Any) -> dict[str, Any]:
    """Transaction id to the shadow decision of each XADD the handler asked for."""
    out = {}
    for command in effects.commands:
        assert command[0] == "XADD" and command[1] == "rtml:shadow:test"
        pairs = command[command.index("*") + 1 :]
        fields = dict(zip(pairs[::2], pairs[1::2], strict=True))
        assert fields[b"source"] == SHADOW.encode()
        event = decode(b"0-1", fields)
        out[event.transaction.transaction_id] = event.decision
    return out


def test_the_challenger_scores_the_champions_decisions_and_the_champion_the_canarys() -> None:
    champion, challenger = StandIn("1"), StandIn("2")
    entries = [decided(i, "1" if i % 3 else "2") for i in range(9)]
    shadowed = scores(asyncio.run(shadow(champion, challenger).handle(entries)))
    assert set(shadowed) == {f"t-{i}" for i in range(9)}
    for i in range(9):
        score = shadowed[f"t-{i}"]
        assert score.model_version == ("2" if i % 3 else "1")
        # Scored on the record's features: what the deciding model received.
        assert score.fraud_probability == pytest.approx(i / 10)
        assert score.decision == ("decline" if i >= 5 else "approve")
    assert challenger.given[0]["channel"] == ["online"] * 6


def test_without_a_challenger_nothing_is_shadowed_and_everything_is_acknowledged() -> None:
    effects = asyncio.run(shadow(StandIn("1"), None).handle([decided(i, "1") for i in range(4)]))
    assert effects.commands == [] and effects.dead_letters == [] and effects.ack is None


def test_the_share_is_chosen_by_transaction_id_and_undecided_transactions_are_left_alone() -> None:
    from services.scorer.scoring import in_share

    entries = [decided(i, "1") for i in range(200)]
    undecided = Entry(STREAM, b"999-0", encode(entries[0].fields[b"transaction"], "upstream"))
    shadowed = scores(
        asyncio.run(shadow(StandIn("1"), StandIn("2"), share=0.3).handle([*entries, undecided]))
    )
    assert set(shadowed) == {f"t-{i}" for i in range(200) if in_share(f"t-{i}", 0.3)}
    assert 30 < len(shadowed) < 90


def test_a_challenger_reading_features_the_record_lacks_is_skipped_and_counted() -> None:
    challenger = StandIn("2", features=("amount_z", "channel", "merchant_fraud_rate_30d"))
    scoring = shadow(StandIn("1"), challenger)
    effects = asyncio.run(scoring.handle([decided(i, "1") for i in range(5)]))
    assert effects.commands == [] and scoring.skipped == 5 and challenger.given == []


def test_malformed_entries_go_to_the_dead_letters_and_the_rest_are_shadowed() -> None:
    bad = Entry(STREAM, b"50-0", {b"schema": b"transaction.v0", b"source": b"scorer"})
    effects = asyncio.run(shadow(StandIn("1"), StandIn("2")).handle([decided(1, "1"), bad]))
    assert [(e.id, reason) for e, reason in effects.dead_letters] == [
        (b"50-0", "schema: 'transaction.v0' is not 'transaction.v1'")
    ]
    assert set(scores(effects)) == {"t-1"}


def test_a_version_of_another_feature_service_is_refused() -> None:
    scoring = shadow(StandIn("1"), None)
    with pytest.raises(FeaturesMismatch, match="another_service"):
        scoring.check(StandIn("3", contract=Contract("another_service")))
    scoring.check(StandIn("3"))
