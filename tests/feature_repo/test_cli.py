"""The README's recipe for Feast's CLI: export the settings to a shell, then `feast plan` in feature_repo/."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from model_store.settings import REPO_ROOT, Settings


def test_feast_plan_from_feature_repo_with_exported_settings(settings: Settings) -> None:
    bin_dir = Path(sys.executable).parent
    script = f'eval "$({sys.executable} -m model_store.settings)" && cd feature_repo && {bin_dir}/feast plan'
    # Only the RTML_ variables of this test: the shell gets Feast's from the eval, as a user's shell does.
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEAST_")}
    done = subprocess.run(
        ["bash", "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for view in ("customer_activity", "merchant_risk", "transaction_request_features", "fraud_scorer_v1"):
        assert view in done.stdout
    # Planning registers nothing.
    assert settings.feature_store().list_feature_views() == []
