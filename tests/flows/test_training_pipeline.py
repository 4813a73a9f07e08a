"""The training flow end to end on the feature pipeline's data, in an MLflow of its own."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from flows.training.dataset import open_feature_store
from model_store import registry
from model_store.profiles import load_reference_profile
from model_store.settings import Settings, clear_settings, get_settings
from model_store.tracking import mlflow_client


@pytest.fixture
def private_settings(
    pipeline_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    """The pipeline fixture's data and features; MLflow, registry and artifacts of this test alone."""
    from tests.fixtures.training import training_env

    home = tmp_path / "rtml"
    (home / "mlflow").mkdir(parents=True)
    for key, value in training_env(pipeline_env, str(home)).items():
        monkeypatch.setenv(key, value)
    clear_settings()
    settings = get_settings()
    settings.export_feast_env()
    yield settings
    clear_settings()


def test_training_flow_registers_promotes_and_is_reproducible(private_settings: Settings) -> None:
    from flows.training_pipeline import training_pipeline
    from tests.fixtures.training import SMALL_TRAINING

    params = SMALL_TRAINING.model_copy(
        update={"promotion": SMALL_TRAINING.promotion.model_copy(update={"pr_auc_margin": 0.001})}
    )
    first = training_pipeline(params)
    assert first["promoted"] and first["model_version"] == "1"
    client = mlflow_client(private_settings)
    run = client.get_run(first["run_id"])

    # What the run records: split dates, lineage, the tuning's subsample, the code version, Feast's own link.
    for key in ("split.validation_start", "split.test_start", "data.transactions_hash", "tuning.data"):
        assert run.data.params[key]
    assert run.data.params["data.feature_service"] == private_settings.feature_service
    assert run.data.tags["git_commit"]
    assert run.data.tags["feast.feature_service"] == private_settings.feature_service
    for metric in ("model.pr_auc", "baseline.pr_auc", "oracle.pr_auc", "model.recall_at_fpr", "model.brier"):
        assert metric in run.data.metrics
    assert any(key.startswith("slice.channel.online.") for key in run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert artifacts == {
        f"plots/{name}.png"
        for name in ("precision_recall", "roc", "calibration", "score_distribution", "shap_summary")
    }
    lineage = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/lineage/dataset.json")
    assert lineage["transaction_files"] and all(len(f["sha256"]) == 64 for f in lineage["transaction_files"])
    trials = client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'"
    )
    assert len(trials) == params.n_trials

    # The drift reference: the model's features plus the holdout scores.
    profile = load_reference_profile(run.info.run_id)
    contract = registry.load_champion(private_settings).contract
    assert set(profile.get_columns()) == {*contract.features, "score"}

    # The version carries its contract, and Feast resolves the model back to its feature service.
    version = client.get_model_version(private_settings.model_name, "1")
    assert version.run_id == run.info.run_id  # monitoring finds the reference profile through it
    assert float(version.tags["decision_threshold"]) == pytest.approx(contract.decision_threshold)
    assert json.loads(version.tags["features"]) == contract.features
    store = open_feature_store(private_settings)
    assert store.mlflow.resolve_features(f"models:/{private_settings.model_name}/champion") == (
        private_settings.feature_service
    )

    # Same data and seed: the same model, which therefore does not beat the champion and says so.
    second = training_pipeline(params)
    second_run = client.get_run(second["run_id"])
    for key in (
        "model.pr_auc",
        "model.roc_auc",
        "model.log_loss",
        "model.decision_threshold",
        "baseline.pr_auc",
    ):
        assert second_run.data.metrics[key] == run.data.metrics[key], key
    assert second_run.data.params["data.training_frame_hash"] == run.data.params["data.training_frame_hash"]
    assert not second["promoted"]
    rejected = client.get_model_version(private_settings.model_name, second["model_version"])
    assert rejected.tags["promotion.decision"] == "rejected"
    assert "champion v1" in rejected.tags["promotion.reasons"]
    assert "pr_auc_margin=0.001" in rejected.tags["promotion.reasons"]
    assert second_run.data.metrics["champion.pr_auc"] == run.data.metrics["model.pr_auc"]
    aliases = {a: str(v) for a, v in client.get_registered_model(private_settings.model_name).aliases.items()}
    assert aliases == {"champion": "1", "challenger": second["model_version"]}


def test_champion_fixture_loads_with_its_contract(champion_settings: Settings) -> None:
    scorer = registry.load_champion(champion_settings)
    assert scorer.feature_service == champion_settings.feature_service
    assert "channel" in scorer.contract.categorical_features
    assert 0 < scorer.threshold < 1
