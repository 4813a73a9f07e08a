"""Hyperparameter search over CatBoost with Optuna: batches of trials, a median pruner and a time budget.

Trials are asked in batches of ``parallelism``; their parameters are drawn in trial order on the caller's
thread and results are told back in trial order once the batch ends, so a seeded search proposes the same
trials whatever order parallel workers finish in. How a batch runs (serially, or as Prefect tasks) is the
caller's ``evaluate`` function.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna

from flows.training.dataset import FeatureSpec
from flows.training.models import FitData, catboost_params, fit_catboost, predict_scores

logger = logging.getLogger(__name__)

# CatBoost's validation metric reported to the pruner every this many boosting iterations.
REPORT_EVERY = 10


@dataclass(frozen=True)
class TrialSettings:
    """What every trial's fit shares, besides the searched parameters."""

    seed: int
    thread_count: int
    iterations: int
    early_stopping_rounds: int
    deadline: float = float("inf")  # time.monotonic() after which running fits stop and count as pruned


@dataclass(frozen=True)
class TrialOutcome:
    """One trial's result: validation PR-AUC when it completed, or why it did not."""

    number: int
    params: dict[str, Any]
    value: float | None = None
    pruned: bool = False
    best_iteration: int | None = None
    seconds: float = 0.0
    error: str | None = None
    intermediate: dict[int, float] = field(default_factory=dict)

    @property
    def state(self) -> str:
        return "failed" if self.error else "pruned" if self.pruned else "complete"


def create_study(seed: int) -> optuna.Study:
    """A maximizing study with a seeded TPE sampler and a median pruner on the validation PR-AUC curve."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=6),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=5 * REPORT_EVERY),
    )


def suggest_params(trial: optuna.Trial) -> dict[str, Any]:
    """CatBoost's parameters that matter most for a small tabular problem, on ranges that fit our budget."""
    return {
        "depth": trial.suggest_int("depth", 4, 8),
        "learning_rate": trial.suggest_float("learning_rate", 0.05, 0.3, log=True),
        "l2_leaf_reg": trial.suggest_float("l2_leaf_reg", 1.0, 30.0, log=True),
        "random_strength": trial.suggest_float("random_strength", 0.1, 10.0, log=True),
        "bagging_temperature": trial.suggest_float("bagging_temperature", 0.0, 1.0),
        "one_hot_max_size": trial.suggest_categorical("one_hot_max_size", [2, 10]),
        "auto_class_weights": trial.suggest_categorical("auto_class_weights", ["None", "SqrtBalanced"]),
    }


class PruningCallback:
    """CatBoost callback: reports validation PR-AUC to the trial and stops when pruned or out of time."""

    def __init__(self, trial: optuna.Trial, deadline: float) -> None:
        self.trial = trial
        self.deadline = deadline
        self.pruned = False
        self.intermediate: dict[int, float] = {}

    def after_iteration(self, info: Any) -> bool:
        if time.monotonic() > self.deadline:
            self.pruned = True
            return False
        if info.iteration % REPORT_EVERY:
            return True
        value = float(info.metrics["validation"]["PRAUC"][-1])
        self.intermediate[info.iteration] = value
        self.trial.report(value, info.iteration)
        if self.trial.should_prune():
            self.pruned = True
            return False
        return True


def run_trial(
    trial: optuna.Trial,
    params: dict[str, Any],
    train: FitData,
    validation: FitData,
    spec: FeatureSpec,
    settings: TrialSettings,
) -> TrialOutcome:
    """Fit one CatBoost with ``params`` and score it on validation; a failed fit is an outcome, not a crash."""
    from sklearn.metrics import average_precision_score

    started = time.monotonic()
    callback = PruningCallback(trial, settings.deadline)
    full = catboost_params(
        params, settings.seed, settings.thread_count, settings.iterations, settings.early_stopping_rounds
    )
    try:
        model = fit_catboost(train, validation, spec, full, callbacks=[callback])
    except Exception as error:  # one bad corner of the space must not end the search
        logger.warning("trial %d failed: %s", trial.number, error)
        return TrialOutcome(trial.number, params, error=str(error), seconds=time.monotonic() - started)
    value = None
    if not callback.pruned:
        value = float(average_precision_score(validation.y, predict_scores(model, validation.x)))
    return TrialOutcome(
        number=trial.number,
        params=params,
        value=value,
        pruned=callback.pruned,
        best_iteration=int(model.get_best_iteration() or 0),
        seconds=time.monotonic() - started,
        intermediate=callback.intermediate,
    )


Batch = list[tuple[optuna.Trial, dict[str, Any]]]


def search(
    study: optuna.Study,
    evaluate: Callable[[Batch], list[TrialOutcome]],
    n_trials: int,
    timeout_seconds: float,
    parallelism: int,
) -> list[TrialOutcome]:
    """Run up to ``n_trials`` in batches of ``parallelism`` until the time budget is spent.

    No new batch starts after ``timeout_seconds``; fits still running at the deadline stop themselves (see
    ``TrialSettings.deadline``). Raises when no trial completed, naming the trials' errors.
    """
    if n_trials < 1 or parallelism < 1:
        raise ValueError(f"n_trials={n_trials} and parallelism={parallelism} must be at least 1")
    started = time.monotonic()
    outcomes: list[TrialOutcome] = []
    while len(outcomes) < n_trials and time.monotonic() - started < timeout_seconds:
        batch = []
        for _ in range(min(parallelism, n_trials - len(outcomes))):
            trial = study.ask()
            batch.append((trial, suggest_params(trial)))
        results = sorted(evaluate(batch), key=lambda o: o.number)
        for (trial, _), outcome in zip(batch, results, strict=True):
            if outcome.error:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            elif outcome.pruned:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            else:
                study.tell(trial, outcome.value)
            logger.info("trial %d %s: %s", outcome.number, outcome.state, outcome.value)
        outcomes.extend(results)
    if not any(o.state == "complete" for o in outcomes):
        errors = "; ".join(sorted({o.error for o in outcomes if o.error})) or "all pruned or out of time"
        raise RuntimeError(f"no hyperparameter trial completed ({len(outcomes)} tried): {errors}")
    return outcomes


def best_outcome(outcomes: list[TrialOutcome]) -> TrialOutcome:
    """The completed trial with the highest validation PR-AUC (earliest on ties)."""
    complete = [o for o in outcomes if o.state == "complete"]
    return max(complete, key=lambda o: (o.value, -o.number))
