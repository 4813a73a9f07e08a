"""The Prefect deployments that Python starts or looks up, by the names prefect.yaml gives them.

prefect.yaml is the source of truth for deployments; code that names one takes the name from here, and
``tests/deploy/test_prefect_yaml.py`` checks that each is declared there and that no other module spells one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# ``flow_name/deployment-name``, as ``prefect deployment run`` and ``run_deployment`` take them.
FEATURE_PIPELINE = "feature_pipeline/feature-pipeline"
TRAINING_PIPELINE = "training_pipeline/training-pipeline"
DRIFT_REPORT = "drift_report/drift-report"
BUILD_SERVICE = "build_service/build-service"
BATCH_SCORING = "batch_scoring/batch-scoring"
DEPLOYMENTS = (FEATURE_PIPELINE, TRAINING_PIPELINE, DRIFT_REPORT, BUILD_SERVICE, BATCH_SCORING)
# The work pool every deployment of prefect.yaml runs on by default.
WORK_POOL = "local-process"


def declared_deployments(prefect_yaml: Path | None = None) -> dict[str, dict[str, Any]]:
    """prefect.yaml's deployments by ``flow_name/deployment-name`` (flow name: the entrypoint's function)."""
    import yaml

    from model_store.settings import REPO_ROOT

    spec = yaml.safe_load((prefect_yaml or REPO_ROOT / "prefect.yaml").read_text())
    return {f"{d['entrypoint'].rsplit(':', 1)[1]}/{d['name']}": d for d in spec["deployments"]}
