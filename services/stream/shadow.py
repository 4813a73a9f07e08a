"""Shadow scoring from the decision record: the model that did not decide a transaction scores it too.

    python -m services.stream.shadow

It consumes the transactions stream with its own consumer group. For each decided transaction (``shadow_share``
of them, chosen by transaction id) the registry's other model scores the features the decision record holds,
which are what the deciding model received: the ``challenger`` for the champion's decisions, the ``champion``
for the canary's. The score goes to the shadow stream (``rtml:shadow:<project>``, the ``transaction.v1`` format
with source ``shadow``) in one Redis transaction with the acknowledgement, so each decision gets exactly one
shadow score, and the request that made the decision pays nothing for it. The traffic log writes the shadow
scores beside the prediction log; the drift report sets the two models against each other.

The models follow the registry's aliases as the scoring service's do (``services/scorer/rollout.py``); without
a challenger every entry is acknowledged with nothing to do. A challenger that reads a feature the deciding
model did not (the record does not hold it) cannot be scored from the record: those transactions are skipped,
counted and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from services.stream.consumer import Effects, Entry
from services.stream.events import SHADOW, decision_json, decode_entries, encode, transaction_json
from services.stream.publish import xadd
from services.stream.runner import Role, main

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from services.scorer.model import ServingModel
    from services.scorer.scoring import Models
    from services.stream.events import TransactionEvent
    from services.stream.settings import StreamSettings

logger = logging.getLogger(__name__)

GROUP = "shadow"


@dataclass
class ShadowScoring:
    """The champion and challenger the shadow scores with (swapped by ``ModelFollower``), and the handler."""

    models: Models
    stream: str
    max_length: int
    share: float
    scored: int = 0
    skipped: int = 0
    _warned: set[str] = field(default_factory=set)

    def swap(self, models: Models) -> None:
        self.models = models

    def check(self, model: ServingModel) -> None:
        """Refuse a version trained on another feature service than the one the decisions were made on."""
        from services.scorer.scoring import FeaturesMismatch

        served = self.models.champion.contract.feature_service
        if model.contract.feature_service != served:
            raise FeaturesMismatch(
                f"model {model.name} v{model.version} was trained on feature service "
                f"{model.contract.feature_service!r}; the decisions are made on {served!r}"
            )

    async def handle(self, entries: list[Entry]) -> Effects:
        from services.scorer.scoring import in_share

        effects = Effects()
        models = self.models  # one snapshot for the batch, as the service decides a batch with one
        if models.challenger is None:
            return effects
        by_model: dict[str, tuple[ServingModel, list[TransactionEvent]]] = {}
        for _, event in decode_entries(entries, effects.dead_letters):
            decision = event.decision
            if decision is None or not in_share(event.transaction.transaction_id, self.share):
                continue
            other = (
                models.champion if decision.model_version == models.challenger.version else models.challenger
            )
            by_model.setdefault(other.version, (other, []))[1].append(event)
        scored_at = datetime.now(UTC)
        for model, events in by_model.values():
            scorable = [e for e in events if self._holds_features(model, e)]
            self.skipped += len(events) - len(scorable)
            if not scorable:
                continue
            columns: dict[str, list[Any]] = {
                name: [e.decision.features[name] for e in scorable if e.decision is not None]
                for name in model.features
            }
            for event, score in zip(scorable, model.predict(columns).tolist(), strict=True):
                result = {
                    "fraud_probability": score,
                    "decision": model.decide_one(score),
                    "threshold": model.threshold,
                    "model_name": model.name,
                    "model_version": model.version,
                }
                record = encode(
                    transaction_json(event.transaction), SHADOW, decision_json(result, scored_at, {})
                )
                effects.commands.append(xadd(self.stream, record, self.max_length))
            self.scored += len(scorable)
        return effects

    def _holds_features(self, model: ServingModel, event: TransactionEvent) -> bool:
        held = event.decision.features if event.decision is not None else {}
        absent = [name for name in model.features if name not in held]
        if absent and model.version not in self._warned:
            self._warned.add(model.version)
            logger.error(
                "%s v%s reads %s, which the decision record (what the deciding model received) does not hold: "
                "it cannot be shadowed from the record; those transactions are skipped",
                model.name,
                model.version,
                absent,
            )
        return not absent


def open_shadow(settings: StreamSettings) -> ShadowScoring:
    """The registry's champion (the challenger is loaded by the first poll)."""
    from model_store.registry import load_champion
    from services.scorer.model import ServingModel
    from services.scorer.scoring import Models

    champion = load_champion(settings)
    model = ServingModel(champion.model, champion.name, champion.version, champion.contract)
    return ShadowScoring(
        Models(model), settings.stream("shadow"), settings.stream_max_length, settings.shadow_share
    )


async def shadow_role(settings: StreamSettings, client: Redis, stopping: asyncio.Event) -> Role | None:
    """Load the champion, read the aliases once (so the first batch already knows the challenger), consume."""
    from services.scorer.metrics import scorer_metrics
    from services.scorer.rollout import ModelFollower
    from services.scorer.settings import get_service_settings

    shadow = await asyncio.to_thread(open_shadow, settings)
    follower = ModelFollower(shadow, get_service_settings(), scorer_metrics(), explain=False)
    await follower.poll()
    following = asyncio.get_running_loop().create_task(follower.run())
    logger.info(
        "shadow scoring %.0f %% of decisions; champion %s v%s, challenger %s",
        100 * settings.shadow_share,
        shadow.models.champion.name,
        shadow.models.champion.version,
        f"v{shadow.models.challenger.version}" if shadow.models.challenger else "none yet",
    )

    async def release() -> None:
        following.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await following

    return Role(
        name="shadow",
        group=GROUP,
        streams=[settings.stream("transactions")],
        handler=shadow.handle,
        release=release,
    )


if __name__ == "__main__":
    main(shadow_role, background=True)
