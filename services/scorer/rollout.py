"""The service follows the registry: a moved alias reaches traffic without a restart or a new bento.

Every ``model_poll_seconds`` each service worker reads the registered model's aliases (one registry call, in a
thread). When ``champion`` or ``challenger`` points to a version the worker does not serve, the version is
loaded in the background and checked before it may decide anything:

- its contract's feature service is the one the service reads, and every feature it reads is provided;
- it scores the input example logged with it, through the serving path, with finite probabilities equal to
  what the model gives offline on the same rows.

A version that passes is swapped in between requests (``OnlineScoring.swap``: a request decides with the models
it started with); one that fails is refused loudly (an error log line naming the reason, the
``model_swaps_total{outcome="refused"}`` metric) and the current models keep serving; readiness is not touched.
The same version is not tried again until an alias moves. With the registry unreachable, the worker keeps
what it serves (at start, the bento's baked model) and says so once.

A registry version never changes, so the last ``RETAINED_VERSIONS`` versions swapped out stay loaded (with their
reason-code tables): a rollback, or a move back to a version served before, swaps at once, without the load,
the check and the table that take a core for a few seconds while the worker serves.

The bound from an alias move to the first decision by the new version is ``model_poll_seconds`` plus the load
and check (a second or two; ``LOAD_SECONDS`` allowed): 10 s with the default poll of 5 s (docs/deployment.md,
Model rollout).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import OrderedDict
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from model_store.registry import CHALLENGER, CHAMPION

if TYPE_CHECKING:
    from services.scorer.metrics import ScorerMetrics
    from services.scorer.model import ServingModel
    from services.scorer.scoring import Models
    from services.scorer.settings import ServiceSettings

logger = logging.getLogger(__name__)

# Allowed for loading and checking a version (measured: 1-2 s here; a remote registry and artifact store add
# their download).
LOAD_SECONDS = 5.0
# Versions swapped out and kept loaded, the most recent first: the previous champion and challenger (a few MB
# each: the model and its reason-code table).
RETAINED_VERSIONS = 2


def swap_bound_seconds(settings: ServiceSettings) -> float:
    """The documented bound from an alias move to the first decision by the new version."""
    return settings.model_poll_seconds + LOAD_SECONDS


class ModelRefused(ValueError):
    """A registry version this service cannot serve; the message says why."""


def load_version(settings: ServiceSettings, version: str) -> ServingModel:
    """A registry version as a ``ServingModel``, checked against its logged input example."""
    import numpy as np

    from model_store.registry import load_input_example, load_scorer
    from services.scorer.model import ServingModel

    scorer = load_scorer(version, settings)
    model = ServingModel(scorer.model, scorer.name, scorer.version, scorer.contract)
    example = load_input_example(version, settings)
    if example is None or len(example) == 0:
        raise ModelRefused(f"{model.name} v{version} has no input example to check it on")
    offline = scorer.score(example)
    columns = {
        name: [None if isinstance(v, float) and math.isnan(v) else v for v in example[name].tolist()]
        for name in model.features
    }
    served = model.predict(columns)
    if not np.all(np.isfinite(served)) or not np.all((served >= 0) & (served <= 1)):
        raise ModelRefused(f"{model.name} v{version} scores its input example outside [0, 1]: {served[:5]}")
    if not np.allclose(served, offline, atol=1e-6):
        raise ModelRefused(
            f"{model.name} v{version} scores its input example differently served ({served[:3]}) and offline "
            f"({offline[:3]})"
        )
    model.input_example = columns
    return model


class Following(Protocol):
    """What a follower keeps on the registry's aliases: the scoring service's ``OnlineScoring``, the shadow's."""

    models: Models

    def swap(self, models: Models) -> None: ...

    def check(self, model: ServingModel) -> None:
        """Raise when ``model`` cannot be served here (the message says why)."""


class ModelFollower:
    """Keeps the champion and challenger of what it follows on the registry's aliases (see the module docstring)."""

    def __init__(
        self,
        scoring: Following,
        settings: ServiceSettings,
        metrics: ScorerMetrics,
        load: Any = load_version,
        explain: bool = True,
    ) -> None:
        self.scoring = scoring
        self.settings = settings
        self.metrics = metrics
        self.load = load
        # Whether loaded versions get their reason-code tables (a shadow scorer does not explain).
        self.explain = explain
        self.interval = settings.model_poll_seconds
        self._refused: dict[str, str] = {}
        self._preparing: set[asyncio.Task[None]] = set()
        self._unreachable = False
        self._retained: OrderedDict[str, ServingModel] = OrderedDict()

    async def run(self) -> None:
        """Poll until cancelled."""
        while True:
            await self.poll()
            await asyncio.sleep(self.interval)

    async def poll(self) -> None:
        """Read the aliases once and move to what they name (loading in a thread; nothing raised)."""
        from model_store.registry import aliases

        try:
            current = await asyncio.to_thread(aliases, self.settings)
        except Exception as error:  # any failure to reach the registry: keep serving what we serve
            if not self._unreachable:
                models = self.scoring.models
                kind = "the bento's baked" if models.baked else "its last loaded"
                logger.warning(
                    "model registry at %s unreachable (%s): serving %s v%s, %s version",
                    self.settings.mlflow_tracking_uri,
                    error,
                    models.champion.name,
                    models.champion.version,
                    kind,
                )
                self._unreachable = True
            self.metrics.registry_up.set(0)
            return
        if self._unreachable:
            logger.info("model registry at %s reachable again", self.settings.mlflow_tracking_uri)
            self._unreachable = False
        self.metrics.registry_up.set(1)
        await self.follow(current.get(CHAMPION), current.get(CHALLENGER))

    async def follow(self, champion: str | None, challenger: str | None) -> None:
        models = self.scoring.models
        if champion is not None and champion != models.champion.version:
            if models.challenger is not None and models.challenger.version == champion:
                loaded = models.challenger  # promoted: loaded and checked already, shadowing
            else:
                loaded = await self._take(CHAMPION, champion)
            if loaded is not None:
                previous = models.champion
                models = replace(self.scoring.models, champion=loaded, baked=False)
                self.scoring.swap(models)
                self._retain(previous)
                self.metrics.set_model(loaded.name, loaded.version, previous.version)
                logger.info(
                    "champion %s: v%s -> v%s, swapped without a restart",
                    loaded.name,
                    previous.version,
                    loaded.version,
                )
        current = self.scoring.models.challenger
        if challenger is None or challenger == self.scoring.models.champion.version:
            if current is not None:
                self.scoring.swap(replace(self.scoring.models, challenger=None))
                self._retain(current)
                logger.info("no challenger any more: shadow and canary off")
        elif current is None or current.version != challenger:
            loaded = await self._take(CHALLENGER, challenger)
            if loaded is not None:
                self.scoring.swap(replace(self.scoring.models, challenger=loaded))
                if current is not None:
                    self._retain(current)
                logger.info(
                    "challenger %s v%s loaded: it decides the canary and is scored in the shadow",
                    loaded.name,
                    loaded.version,
                )

    def _retain(self, model: ServingModel) -> None:
        """Keep a version swapped out loaded, unless it still serves (a champion demoted to challenger)."""
        models = self.scoring.models
        serving = {models.champion.version, models.challenger.version if models.challenger else None}
        if model.version in serving:
            return
        self._retained[model.version] = model
        self._retained.move_to_end(model.version, last=False)
        while len(self._retained) > RETAINED_VERSIONS:
            self._retained.popitem()

    async def _take(self, alias: str, version: str) -> ServingModel | None:
        """``version`` from the versions kept loaded, or loaded and checked now (None when refused)."""
        retained = self._retained.pop(version, None)
        if retained is not None:
            self.metrics.model_swaps.labels(outcome="retained").inc()
            return retained
        return await self._load(alias, version)

    async def _load(self, alias: str, version: str) -> ServingModel | None:
        if self._refused.get(alias) == version:
            return None
        try:
            model = await asyncio.to_thread(self.load, self.settings, version)
            self.scoring.check(model)
        except (
            Exception
        ) as error:  # any failure to load or check: refused, and the current models keep serving
            self._refused[alias] = version
            self.metrics.model_swaps.labels(outcome="refused").inc()
            logger.error(
                "refused %s v%s (%s): %s; still serving v%s",
                alias,
                version,
                type(error).__name__,
                error,
                self.scoring.models.champion.version,
            )
            return None
        self._refused.pop(alias, None)
        self.metrics.model_swaps.labels(outcome="loaded").inc()
        if self.explain:
            self.explain_soon(model)
        return model

    def explain_soon(self, model: ServingModel) -> None:
        """Prepare the model's reason codes in a thread; until they are ready, CatBoost explains row by row.

        Not awaited: a rollback right after a promotion must not wait for the promoted version's table.
        """
        from services.scorer.explanations import prepare_explanations

        task = asyncio.get_running_loop().create_task(
            asyncio.to_thread(prepare_explanations, model, self.settings)
        )
        self._preparing.add(task)
        task.add_done_callback(self._preparing.discard)
