"""The registry: promotion gate, decisions recorded on versions, rollback, loading the champion anywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from model_store import registry
from model_store.registry import PromotionPolicy, decide_promotion
from model_store.scorer import ModelContract, prepare_features
from model_store.settings import REPO_ROOT, Settings
from model_store.tracking import ensure_experiment, mlflow_client

POLICY = PromotionPolicy(pr_auc_margin=0.01, min_pr_auc=0.3, min_roc_auc=0.7)


def test_first_model_is_promoted_when_it_passes_the_floors() -> None:
    decision = decide_promotion({"pr_auc": 0.5, "roc_auc": 0.9}, None, POLICY)
    assert decision.promote
    assert "first champion" in decision.reasons[0]


def test_floors_refuse_a_weak_first_model_and_name_the_threshold() -> None:
    decision = decide_promotion({"pr_auc": 0.2, "roc_auc": 0.65}, None, POLICY)
    assert not decision.promote
    assert any("min_pr_auc=0.3" in r for r in decision.reasons)
    assert any("min_roc_auc=0.7" in r for r in decision.reasons)


def test_challenger_must_beat_champion_by_more_than_the_margin() -> None:
    champion = {"pr_auc": 0.50, "roc_auc": 0.9}
    assert not decide_promotion({"pr_auc": 0.505, "roc_auc": 0.9}, champion, POLICY, "3").promote
    assert decide_promotion({"pr_auc": 0.52, "roc_auc": 0.9}, champion, POLICY, "3").promote
    worse = decide_promotion({"pr_auc": 0.45, "roc_auc": 0.9}, champion, POLICY, "3")
    assert "champion v3" in worse.reasons[0] and "pr_auc_margin=0.01" in worse.reasons[0]


def test_nan_metric_fails_its_floor() -> None:
    assert not decide_promotion({"pr_auc": float("nan"), "roc_auc": 0.9}, None, POLICY).promote


SHADOW_POLICY = POLICY.model_copy(
    update={
        "min_shadow_hours": 48,
        "min_live_labels": 1000,
        "min_live_positives": 20,
        "max_live_pr_auc_drop": 0.02,
    }
)


def test_a_policy_asking_for_live_evidence_holds_a_better_model_in_the_shadow() -> None:
    champion = {"pr_auc": 0.50, "roc_auc": 0.9}
    held = decide_promotion({"pr_auc": 0.6, "roc_auc": 0.9}, champion, SHADOW_POLICY, "3")
    assert not held.promote and held.shadowing and held.verdict == "shadowing"
    assert "48 hours" in held.reasons[-1] and "1000 labels" in held.reasons[-1]
    # A worse model is rejected on its holdout: it never waits for live evidence.
    worse = decide_promotion({"pr_auc": 0.45, "roc_auc": 0.9}, champion, SHADOW_POLICY, "3")
    assert worse.verdict == "rejected"
    # The first champion has nothing to shadow beside.
    assert decide_promotion({"pr_auc": 0.6, "roc_auc": 0.9}, None, SHADOW_POLICY).promote


@pytest.mark.parametrize(
    ("hours", "labelled", "positives", "live", "verdict", "named"),
    [
        (12.0, 5000, 80, (0.40, 0.45), "shadowing", "12.0 hours"),
        (72.0, 900, 80, (0.40, 0.45), "shadowing", "900 labelled"),
        (72.0, 5000, 10, (0.40, 0.45), "shadowing", "10 frauds"),
        (72.0, 5000, 80, (None, None), "shadowing", "shadowing"),
        (72.0, 5000, 80, (0.40, 0.39), "promoted", "live PR-AUC 0.3900"),
        (72.0, 5000, 80, (0.40, 0.37), "rejected", "max_live_pr_auc_drop=0.02"),
    ],
)
def test_the_live_gate_waits_for_evidence_then_promotes_or_rejects(
    hours: float, labelled: int, positives: int, live: tuple, verdict: str, named: str
) -> None:
    decision = registry.decide_after_shadow(hours, labelled, positives, live, SHADOW_POLICY, "3")
    assert decision.verdict == verdict and named in decision.reasons[0]


def test_prepare_features_orders_columns_fills_categories_and_names_bad_columns() -> None:
    frame = pd.DataFrame({"b": ["x", None], "a": [1, 2], "extra": [0, 0]})
    out = prepare_features(frame, ["a", "b"], ["b"])
    assert list(out.columns) == ["a", "b"]
    assert out["a"].dtype == np.float64
    assert out["b"].tolist() == ["x", "__missing__"]
    with pytest.raises(ValueError, match=r"\['c'\] are missing"):
        prepare_features(frame, ["a", "c"], [])
    with pytest.raises(ValueError, match="'b' must be numeric"):
        prepare_features(frame, ["b"], [])


def _log_version(settings: Settings, signal: float, seed: int = 0) -> str:
    """Train a tiny CatBoost whose skill grows with ``signal``, log it with a contract, register it."""
    import mlflow
    from catboost import CatBoostClassifier

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(400, 2))
    y = (signal * x[:, 0] + rng.normal(size=400) > 1.0).astype(int)
    frame = pd.DataFrame({"f0": x[:, 0], "f1": x[:, 1], "kind": np.where(x[:, 1] > 0, "a", "b")})
    model = CatBoostClassifier(
        iterations=10,
        depth=2,
        random_seed=seed,
        verbose=False,
        cat_features=["kind"],
        allow_writing_files=False,
    )
    model.fit(frame, y)
    contract = ModelContract(
        decision_threshold=0.5,
        target_fpr=0.01,
        feature_service="svc_v1",
        features=["f0", "f1", "kind"],
        categorical_features=["kind"],
    )
    client = mlflow_client(settings)
    experiment = ensure_experiment(client, settings, "registry-test")
    with mlflow.start_run(experiment_id=experiment) as run:
        info = mlflow.catboost.log_model(
            model, name="model", metadata=contract.model_dump(), pip_requirements=["catboost"]
        )
    return str(
        registry.register_challenger(info.model_uri, contract, settings, run_id=run.info.run_id).version
    )


def _aliases(settings: Settings) -> dict[str, str]:
    model = mlflow_client(settings).get_registered_model(settings.model_name)
    return {alias: str(version) for alias, version in model.aliases.items()}


def test_gate_promotes_better_keeps_worse_as_challenger_and_rollback_restores(settings: Settings) -> None:
    client = mlflow_client(settings)
    name = settings.model_name

    v1 = _log_version(settings, signal=2.0)
    assert _aliases(settings) == {"challenger": v1}
    registry.record_decision(v1, decide_promotion({"pr_auc": 0.6, "roc_auc": 0.9}, None, POLICY), settings)
    assert _aliases(settings) == {"champion": v1}

    v2 = _log_version(settings, signal=0.5, seed=1)
    worse = decide_promotion({"pr_auc": 0.4, "roc_auc": 0.85}, {"pr_auc": 0.6}, POLICY, v1)
    registry.record_decision(v2, worse, settings)
    assert _aliases(settings) == {"champion": v1, "challenger": v2}
    rejected = client.get_model_version(name, v2)
    assert rejected.tags["promotion.decision"] == "rejected"
    assert f"champion v{v1}" in rejected.tags["promotion.reasons"]
    assert rejected.description.startswith("Stays challenger")

    v3 = _log_version(settings, signal=3.0, seed=2)
    better = decide_promotion({"pr_auc": 0.7, "roc_auc": 0.95}, {"pr_auc": 0.6}, POLICY, v1)
    registry.record_decision(v3, better, settings)
    assert _aliases(settings) == {"champion": v3}
    assert client.get_model_version(name, v3).tags[registry.PREVIOUS_CHAMPION_TAG] == v1

    assert registry.rollback(settings=settings) == (v3, v1)
    assert _aliases(settings)["champion"] == v1
    assert "to v" + v1 in client.get_model_version(name, v3).tags["rolled_back"]
    # v1 replaced nobody: a further rollback needs an explicit target.
    with pytest.raises(LookupError, match="--to-version"):
        registry.rollback(settings=settings)
    assert registry.main(["rollback", "--to-version", v2]) == 0
    assert _aliases(settings)["champion"] == v2
    assert registry.main(["rollback", "--to-version", "99"]) == 1
    listing = registry.describe(settings)
    assert listing[0].startswith(f"v{v3}\t-\tpromoted")
    assert listing[1].startswith(f"v{v2}\tchampion\trejected")


def test_a_shadowing_verdict_keeps_the_challenger_and_records_its_policy(settings: Settings) -> None:
    v1 = _log_version(settings, signal=2.0)
    registry.record_decision(v1, decide_promotion({"pr_auc": 0.6, "roc_auc": 0.9}, None, POLICY), settings)
    v2 = _log_version(settings, signal=3.0, seed=1)
    held = decide_promotion({"pr_auc": 0.7, "roc_auc": 0.95}, {"pr_auc": 0.6}, SHADOW_POLICY, v1)
    registry.record_decision(v2, held, settings, SHADOW_POLICY)
    assert _aliases(settings) == {"champion": v1, "challenger": v2}
    tags = mlflow_client(settings).get_model_version(settings.model_name, v2).tags
    assert tags[registry.DECISION_TAG] == "shadowing"
    assert PromotionPolicy.model_validate_json(tags[registry.POLICY_TAG]) == SHADOW_POLICY


def test_champion_loads_by_alias_in_a_fresh_process(settings: Settings) -> None:
    with pytest.raises(LookupError, match="run the training pipeline first"):
        registry.load_champion(settings)
    v1 = _log_version(settings, signal=2.0)
    registry.record_decision(v1, decide_promotion({"pr_auc": 0.6, "roc_auc": 0.9}, None, POLICY), settings)
    frame = pd.DataFrame({"f0": [2.0, -2.0], "f1": [0.1, -0.1], "kind": ["a", None]})
    expected = registry.load_champion(settings).score(frame)

    code = (
        "import json, pandas as pd\n"
        "from model_store.registry import load_champion\n"
        "s = load_champion()\n"
        "frame = pd.DataFrame({'f0': [2.0, -2.0], 'f1': [0.1, -0.1], 'kind': ['a', None]})\n"
        "print(json.dumps({'version': s.version, 'threshold': s.threshold, 'features': s.features,\n"
        "    'service': s.feature_service, 'scores': s.score(frame).tolist()}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k.startswith(("RTML_", "MLFLOW_", "PATH", "HOME"))}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded["version"] == v1
    assert loaded["threshold"] == 0.5
    assert loaded["features"] == ["f0", "f1", "kind"]
    assert loaded["service"] == "svc_v1"
    assert loaded["scores"] == pytest.approx(expected.tolist())
