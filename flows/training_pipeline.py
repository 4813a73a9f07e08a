"""Training pipeline: point-in-time features from Feast, a baseline and a tuned CatBoost, MLflow, promotion gate.

It reads features and writes nothing but MLflow runs and registry changes. Run locally with
``python -m flows.training_pipeline`` (demo defaults) or deploy ``training_pipeline/training-pipeline``.
"""

from __future__ import annotations

import os
import time
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from flows.feature_store.data_lock import data_lock
from flows.settings import get_flow_settings
from flows.training import plots, tracking
from flows.training.dataset import TrainingSet, build_training_set, open_feature_store, uniform_sample
from flows.training.evaluation import (
    HoldoutReport,
    classification_metrics,
    evaluate_holdout,
    score_on_holdout,
)
from flows.training.models import (
    catboost_params,
    fit_baseline,
    fit_catboost,
    latest_rows,
    to_fit_data,
)
from flows.training.params import TrainingParams
from flows.training.tuning import TrialOutcome, TrialSettings, best_outcome, create_study, run_trial, search
from model_store import libraries, registry
from model_store.registry import PromotionDecision
from model_store.scorer import ModelContract
from model_store.settings import Settings, get_settings

CPUS = os.cpu_count() or 1
# Large frames and models pass between tasks in memory: never hash or persist them.
IN_MEMORY = {"cache_policy": NO_CACHE, "persist_result": False}
MLFLOW_RETRIES = {"retries": 2, "retry_delay_seconds": 10}


@task(**IN_MEMORY)
def build_dataset(settings: Settings, store: Any, params: TrainingParams) -> TrainingSet:
    """Labeled transactions joined to point-in-time features, split by time; lineage logged on the run."""
    started = time.monotonic()
    service = params.feature_service or settings.feature_service
    # Read while no feature-pipeline run writes: the set never mixes files from before and after a run.
    wait = get_flow_settings().data_lock_wait_seconds
    with data_lock(settings.data_dir, "training_pipeline", False, wait, get_run_logger()):
        data = build_training_set(
            settings,
            store,
            service,
            cutoff=params.cutoff,
            validation_fraction=params.validation_fraction,
            test_fraction=params.test_fraction,
            negative_sample_rate=params.negative_sample_rate,
            seed=params.seed,
            label_maturity_days=params.label_maturity_days,
            burn_in_days=params.burn_in_days,
            max_evaluation_rows=params.max_evaluation_rows,
        )
    tracking.log_training_set(data, store, source=str(settings.offline_dir))
    tracking.log_seconds("dataset", started)
    get_run_logger().info("training set %s, split %s", data.lineage["rows"], data.split)
    return data


@task(**IN_MEMORY)
def train_baseline(data: TrainingSet, params: TrainingParams) -> Any:
    """The scikit-learn baseline on the (down-sampled, reweighted) training set."""
    return fit_baseline(to_fit_data(data.train, data.spec), data.spec, params.seed)


@task(**IN_MEMORY, task_run_name="trial-{trial.number}")
def run_trial_task(
    trial: Any, searched: dict[str, Any], fit: dict[str, Any], settings: TrialSettings
) -> TrialOutcome:
    """One Optuna trial: fit CatBoost on the tuning rows, report to the pruner, score on validation."""
    return run_trial(trial, searched, fit["train"], fit["validation"], fit["spec"], settings)


@task(**IN_MEMORY, **MLFLOW_RETRIES)
def log_trials(outcomes: list[TrialOutcome], run: Any) -> None:
    """Each trial as a nested MLflow run under the training run."""
    from model_store.tracking import mlflow_client

    client = mlflow_client(get_settings())
    for outcome in outcomes:
        tracking.log_trial(client, run, outcome)


def tune_catboost(data: TrainingSet, params: TrainingParams, run: Any) -> TrialOutcome:
    """Search CatBoost's parameters on a time-ordered subsample, trials in parallel on the task runner."""
    started = time.monotonic()
    tuning_rows = latest_rows(data.train, params.tuning_rows)
    fit = {
        "train": to_fit_data(tuning_rows, data.spec),
        "validation": to_fit_data(data.validation, data.spec),
        "spec": data.spec,
    }
    budget = params.tuning_minutes * 60
    settings = TrialSettings(
        seed=params.seed,
        thread_count=max(1, CPUS // params.parallel_trials),
        iterations=params.max_iterations,
        early_stopping_rounds=params.early_stopping_rounds,
        deadline=started + budget,
    )

    def evaluate(batch: list[tuple[Any, dict[str, Any]]]) -> list[TrialOutcome]:
        futures = [run_trial_task.submit(trial, searched, fit, settings) for trial, searched in batch]
        return [future.result() for future in futures]

    outcomes = search(create_study(params.seed), evaluate, params.n_trials, budget, params.parallel_trials)
    log_trials(outcomes, run)
    best = best_outcome(outcomes)
    tracking.log_tuning(outcomes, best, len(tuning_rows), len(data.train))
    tracking.log_seconds("tuning", started)
    return best


@task(**IN_MEMORY)
def train_final_model(data: TrainingSet, best: TrialOutcome, params: TrainingParams) -> Any:
    """CatBoost with the best parameters on the full training set, early-stopped on validation."""
    started = time.monotonic()
    full = catboost_params(
        best.params, params.seed, CPUS, params.max_iterations, params.early_stopping_rounds
    )
    model = fit_catboost(
        to_fit_data(data.train, data.spec), to_fit_data(data.validation, data.spec), data.spec, full
    )
    tracking.log_seconds("final_fit", started)
    return model


@task(**IN_MEMORY)
def evaluate(data: TrainingSet, model: Any, baseline: Any, params: TrainingParams) -> HoldoutReport:
    """Holdout metrics of model, baseline and oracle, per slice; the threshold chosen on validation."""
    return evaluate_holdout(data, model, baseline, params.target_fpr)


@task(**IN_MEMORY, **MLFLOW_RETRIES)
def log_run(
    data: TrainingSet, params: TrainingParams, best: TrialOutcome, model: Any, report: HoldoutReport
) -> tuple[str, ModelContract]:
    """Parameters, metrics, slices, plots, the reference profile and the model with its contract."""
    started = time.monotonic()
    contract = ModelContract(
        decision_threshold=report.threshold,
        target_fpr=params.target_fpr,
        feature_service=data.spec.feature_service,
        features=data.spec.features,
        categorical_features=data.spec.categorical_features,
    )
    tracking.log_params(params, best)
    tracking.log_evaluation(report.metrics, report.slices, plots.holdout_figures(data, model, report))
    # The profile describes real traffic: a uniform sample of the training rows, not the class-skewed one.
    reference = to_fit_data(uniform_sample(data.train, params.seed), data.spec).x
    tracking.log_reference_profile(reference, report.scores["model"])
    model_uri = tracking.log_model(model, contract, reference.head(5))
    tracking.log_seconds("logging", started)
    return model_uri, contract


@task(**IN_MEMORY, **MLFLOW_RETRIES)
def register_version(model_uri: str, contract: ModelContract, run: Any, settings: Settings) -> str:
    """The model as a new registry version with the ``challenger`` alias."""
    version = registry.register_challenger(model_uri, contract, settings, run_id=run.info.run_id)
    return str(version.version)


@task(**IN_MEMORY, **MLFLOW_RETRIES)
def promote_if_better(
    version: str,
    data: TrainingSet,
    store: Any,
    report: HoldoutReport,
    params: TrainingParams,
    settings: Settings,
) -> PromotionDecision:
    """Score the champion on this holdout, apply the promotion rule, record the verdict on the version."""
    try:
        champion = registry.load_champion(settings)
    except registry.NoChampionError:
        champion = None
    champion_metrics = None
    if champion is not None:
        try:
            scores = score_on_holdout(champion, data, store)
        except Exception as error:  # a champion we cannot score must not be replaced blindly
            reason = f"champion v{champion.version} could not be scored on this holdout: {error}"
            decision = PromotionDecision(False, (reason,), champion.version)
            registry.record_decision(version, decision, settings)
            return decision
        champion_metrics = classification_metrics(report.y, scores, params.target_fpr)
        tracking.log_metrics({f"champion.{k}": v for k, v in champion_metrics.items()})
    decision = registry.decide_promotion(
        report.headline(), champion_metrics, params.promotion, champion.version if champion else None
    )
    registry.record_decision(version, decision, settings, params.promotion)  # logs the verdict, reasons
    return decision


@flow(name="training_pipeline", task_runner=ThreadPoolTaskRunner(max_workers=max(2, CPUS)))
def training_pipeline(params: TrainingParams = TrainingParams()) -> dict[str, Any]:  # noqa: B008
    """Build the training set, fit baseline and tuned CatBoost, evaluate, log, register and gate."""
    libraries.typeguard.apply_patches()
    libraries.whylogs.apply_patches()
    settings = get_settings()
    store = open_feature_store(settings)
    with tracking.training_run(settings, run_name="training_pipeline") as run:
        data = build_dataset(settings, store, params)
        baseline = train_baseline(data, params)
        best = tune_catboost(data, params, run)
        model = train_final_model(data, best, params)
        report = evaluate(data, model, baseline, params)
        model_uri, contract = log_run(data, params, best, model, report)
        version = register_version(model_uri, contract, run, settings)
        decision = promote_if_better(version, data, store, report, params, settings)
    return tracking.summarize(run, version, decision, report.metrics)


if __name__ == "__main__":
    print(training_pipeline())
