"""Benchmark: the training flow at demo size with 20 trials; prints quality against the oracle and wall time.

Generates demo-size data (1M transactions, the demo's seed and drift) in a temporary home with its own Feast
project and MLflow store, runs the feature pipeline, then times the training flow, so neither the demo's state
nor data left by a small demo changes the figures. Deletes its Redis keys after. Targets (issue 3): holdout
ROC-AUC within 2 % of the oracle's, PR-AUC clearly above the baseline's, whole flow under 10 minutes.

``--home`` and ``--project`` train on data already through the feature pipeline instead, say the 100 M
transactions ``bench_feature_pipeline.py --home`` left (issue 17: 20 trials, peak memory at most 12 GiB, ROC-AUC
within 2 % of the oracle's); the flow's peak resident memory is printed.

    .venv/bin/python tests/benchmarks/bench_training.py
    .venv/bin/python tests/benchmarks/bench_training.py --home /work/run100 --project bench_1234abcd \
        --negative-sample-rate 0.02 --tuning-minutes 30
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))
for key, value in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "WHYLOGS_NO_ANALYTICS": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
}.items():
    os.environ.setdefault(key, value)

TIME_BUDGET_SECONDS = 600
ORACLE_SHARE_TARGET = 0.98
PEAK_GIB_TARGET = 12


def use_home(home: Path, project: str) -> None:
    """Settings of ``home`` and Feast project ``project``, with an MLflow store of the home's own."""
    os.environ.update(
        {
            "RTML_HOME": str(home),
            "RTML_FEAST_PROJECT": project,
            "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow' / 'mlflow.db'}",
        }
    )
    (home / "mlflow").mkdir(parents=True, exist_ok=True)


def prepare_demo_data(home: Path, project: str) -> None:
    """Demo-size data through the feature pipeline, in ``home`` and Feast project ``project``."""
    use_home(home, project)
    import pandas as pd

    from deploy.local.demo import FULL, data_end, generate_demo_data
    from flows.feature_pipeline import feature_pipeline
    from model_store.settings import clear_settings, get_settings

    clear_settings()
    started = time.perf_counter()
    generate_demo_data(get_settings(), FULL, data_end(pd.Timestamp.now(tz="UTC")))
    feature_pipeline()
    print(f"data: demo size in {home}, through the feature pipeline in {time.perf_counter() - started:.0f} s")


def train(params_overrides: dict) -> tuple[dict, object, float, object]:
    """The training flow with 20 trials on the configured home: its summary, MLflow run, wall time, params."""
    from flows.training.params import TrainingParams
    from flows.training_pipeline import training_pipeline
    from model_store.settings import get_settings
    from model_store.tracking import mlflow_client

    params = TrainingParams(n_trials=20, **params_overrides)
    started = time.perf_counter()
    summary = training_pipeline(params)
    wall = time.perf_counter() - started
    return summary, mlflow_client(get_settings()).get_run(summary["run_id"]), wall, params


def main() -> int:
    from tests.conftest import delete_project_keys

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--home", type=Path, help="train on this home's data (already through the pipeline)")
    parser.add_argument("--project", help="the Feast project of --home's data")
    parser.add_argument("--negative-sample-rate", type=float)
    parser.add_argument("--tuning-minutes", type=float)
    args = parser.parse_args()
    overrides = {
        name: value
        for name, value in (
            ("negative_sample_rate", args.negative_sample_rate),
            ("tuning_minutes", args.tuning_minutes),
        )
        if value is not None
    }
    if args.home:
        if not args.project:
            parser.error("--home needs --project, the Feast project its feature pipeline applied")
        use_home(args.home, args.project)
        summary, run, wall, params = train(overrides)
    else:
        project = f"bench_{uuid.uuid4().hex[:8]}"
        with tempfile.TemporaryDirectory(prefix="bench_training_") as tmp:
            try:
                prepare_demo_data(Path(tmp), project)
                summary, run, wall, params = train(overrides)
            finally:
                from model_store.settings import get_settings

                delete_project_keys(project, get_settings().redis_url)
    metrics, run_params = run.data.metrics, run.data.params

    roc, oracle_roc = metrics["model.roc_auc"], metrics.get("oracle.roc_auc", float("nan"))
    pr, baseline_pr = metrics["model.pr_auc"], metrics["baseline.pr_auc"]
    share = roc / oracle_roc
    rows = {k.removeprefix("data.rows_"): v for k, v in run_params.items() if k.startswith("data.rows_")}
    print(f"rows: {rows}")
    print(
        f"trials: {run_params['tuning.trials_run']} run, {metrics['tuning.completed']:.0f} completed, "
        f"{metrics['tuning.pruned']:.0f} pruned, {metrics['tuning.failed']:.0f} failed; "
        f"best validation PR-AUC {metrics['tuning.best_validation_pr_auc']:.4f}"
    )
    steps = {k.removeprefix("seconds."): v for k, v in metrics.items() if k.startswith("seconds.")}
    print("seconds per step: " + ", ".join(f"{k} {v:.0f}" for k, v in steps.items()))
    print(
        f"holdout ROC-AUC: CatBoost {roc:.4f}, oracle {oracle_roc:.4f}, baseline {metrics['baseline.roc_auc']:.4f} "
        f"-> {share:.2%} of the oracle (target >= {ORACLE_SHARE_TARGET:.0%})"
    )
    print(
        f"holdout PR-AUC: CatBoost {pr:.4f}, baseline {baseline_pr:.4f} ({pr / baseline_pr:.2f}x), "
        f"oracle {metrics.get('oracle.pr_auc', float('nan')):.4f}"
    )
    print(
        f"recall at FPR {params.target_fpr:g}: CatBoost {metrics['model.recall_at_fpr']:.4f}, "
        f"oracle {metrics.get('oracle.recall_at_fpr', float('nan')):.4f}; "
        f"precision at top 1 %: {metrics['model.precision_at_top_1pct']:.4f}"
    )
    print(
        f"wall time: {wall:.0f} s for the whole flow with {params.n_trials} trials (target < {TIME_BUDGET_SECONDS} s)"
    )
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak resident memory of the flow's process: {peak_gib:.2f} GiB")
    print(
        f"registry: v{summary['model_version']} promoted={summary['promoted']} ({'; '.join(summary['reasons'])})"
    )
    checks = {
        "ROC-AUC within 2 % of the oracle": share >= ORACLE_SHARE_TARGET,
        "PR-AUC above the baseline": pr > baseline_pr,
    }
    if args.home:
        checks[f"peak memory at most {PEAK_GIB_TARGET} GiB"] = peak_gib <= PEAK_GIB_TARGET
    else:
        checks["under 10 minutes"] = wall < TIME_BUDGET_SECONDS
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'MISS'} {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
