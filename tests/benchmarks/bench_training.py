"""Benchmark: the training flow at demo size with 20 trials; prints quality against the oracle and wall time.

Uses the demo's data (``get_settings()``; generated and run through the feature pipeline first when absent)
and trains in a temporary MLflow, so the demo's registry is left as it was. Targets (issue 3): holdout
ROC-AUC within 2 % of the oracle's, PR-AUC clearly above the baseline's, whole flow under 10 minutes.

    .venv/bin/python tests/benchmarks/bench_training.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
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


def ensure_demo_data() -> None:
    """Generate the demo-size data and run the feature pipeline when no validated transactions exist yet."""
    from model_store.settings import get_settings

    settings = get_settings()
    if any((settings.validated_dir / "transactions").rglob("*.parquet")):
        print(f"data: {settings.validated_dir / 'transactions'} (Feast project {settings.feast_project})")
        return
    from flows.demo import FULL, generate_demo_data
    from flows.feature_pipeline import feature_pipeline

    print(f"data: none in {settings.data_dir}; generating demo-size data and running the feature pipeline")
    generate_demo_data(settings, FULL)
    feature_pipeline()


def use_private_mlflow(home: Path) -> None:
    """Keep the demo's data and features; record runs and versions under ``home`` only."""
    from model_store.settings import get_settings

    shared = get_settings()
    os.environ.update(
        {
            "RTML_HOME": str(home),
            "RTML_DATA_DIR": str(shared.data_dir),
            "RTML_FEAST_REGISTRY": str(shared.feast_registry),
            "RTML_FEAST_PROJECT": shared.feast_project,
            "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow' / 'mlflow.db'}",
        }
    )
    (home / "mlflow").mkdir(parents=True, exist_ok=True)
    get_settings.cache_clear()


def main() -> int:
    ensure_demo_data()
    with tempfile.TemporaryDirectory(prefix="bench_training_") as tmp:
        use_private_mlflow(Path(tmp))
        from flows.training.params import TrainingParams
        from flows.training_pipeline import training_pipeline
        from model_store.settings import get_settings
        from model_store.tracking import mlflow_client

        params = TrainingParams(n_trials=20)
        started = time.perf_counter()
        summary = training_pipeline(params)
        wall = time.perf_counter() - started
        run = mlflow_client(get_settings()).get_run(summary["run_id"])
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
    print(
        f"registry: v{summary['model_version']} promoted={summary['promoted']} ({'; '.join(summary['reasons'])})"
    )
    checks = {
        "ROC-AUC within 2 % of the oracle": share >= ORACLE_SHARE_TARGET,
        "PR-AUC above the baseline": pr > baseline_pr,
        "under 10 minutes": wall < TIME_BUDGET_SECONDS,
    }
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'MISS'} {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
