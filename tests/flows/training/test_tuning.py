"""Hyperparameter search: reproducible under parallel trials, pruning, time budget, failures reported."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import optuna
import pytest

from flows.training.dataset import TrainingSet
from flows.training.evaluation import classification_metrics
from flows.training.models import catboost_params, fit_catboost, latest_rows, predict_scores, to_fit_data
from flows.training.tuning import (
    Batch,
    TrialOutcome,
    TrialSettings,
    best_outcome,
    create_study,
    run_trial,
    search,
)


def _search_and_fit(data: TrainingSet, seed: int) -> tuple[list[TrialOutcome], dict[str, float]]:
    """A whole tuning round with parallel trials, then the final fit and its holdout metrics."""
    spec = data.spec
    train = to_fit_data(latest_rows(data.train, 2500), spec)
    validation = to_fit_data(data.validation, spec)
    settings = TrialSettings(seed=seed, thread_count=1, iterations=80, early_stopping_rounds=20)

    def evaluate(batch: Batch) -> list[TrialOutcome]:
        # Finish order varies between threads; the search must not depend on it.
        with ThreadPoolExecutor(max_workers=2) as pool:
            futures = [
                pool.submit(run_trial, t, p, train, validation, spec, settings) for t, p in reversed(batch)
            ]
            return [f.result() for f in futures]

    outcomes = search(create_study(seed), evaluate, n_trials=4, timeout_seconds=300, parallelism=2)
    best = best_outcome(outcomes)
    params = catboost_params(best.params, seed, thread_count=2, iterations=80, early_stopping_rounds=20)
    model = fit_catboost(to_fit_data(data.train, spec), validation, spec, params)
    test = to_fit_data(data.test, spec)
    return outcomes, classification_metrics(test.y, predict_scores(model, test.x), 0.05)


def test_same_data_and_seed_give_the_same_trials_and_metrics(synthetic_data: TrainingSet) -> None:
    first_trials, first_metrics = _search_and_fit(synthetic_data, seed=11)
    second_trials, second_metrics = _search_and_fit(synthetic_data, seed=11)
    assert [(o.params, o.value) for o in first_trials] == [(o.params, o.value) for o in second_trials]
    assert first_metrics == second_metrics
    other_trials, _ = _search_and_fit(synthetic_data, seed=12)
    assert [o.params for o in other_trials] != [o.params for o in first_trials]


def test_a_pruned_trial_stops_early_and_reports_its_curve(synthetic_data: TrainingSet) -> None:
    spec = synthetic_data.spec
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=0.99))
    trial = study.ask()
    settings = TrialSettings(seed=0, thread_count=1, iterations=300, early_stopping_rounds=300)
    outcome = run_trial(
        trial,
        {"depth": 4},
        to_fit_data(synthetic_data.train, spec),
        to_fit_data(synthetic_data.validation, spec),
        spec,
        settings,
    )
    assert outcome.pruned and outcome.value is None
    assert outcome.intermediate and max(outcome.intermediate) < 300
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)


def test_a_fit_past_the_deadline_counts_as_pruned(synthetic_data: TrainingSet) -> None:
    spec = synthetic_data.spec
    study = create_study(0)
    settings = TrialSettings(
        seed=0, thread_count=1, iterations=300, early_stopping_rounds=30, deadline=time.monotonic() - 1
    )
    outcome = run_trial(
        study.ask(),
        {"depth": 4},
        to_fit_data(synthetic_data.train, spec),
        to_fit_data(synthetic_data.validation, spec),
        spec,
        settings,
    )
    assert outcome.state == "pruned"


def test_search_says_why_when_no_trial_completes() -> None:
    def failing(batch: Batch) -> list[TrialOutcome]:
        return [TrialOutcome(trial.number, params, error="bad parameters") for trial, params in batch]

    with pytest.raises(RuntimeError, match="bad parameters"):
        search(create_study(0), failing, n_trials=3, timeout_seconds=60, parallelism=2)
    with pytest.raises(RuntimeError, match=r"0 tried"):
        search(create_study(0), failing, n_trials=3, timeout_seconds=0, parallelism=2)
