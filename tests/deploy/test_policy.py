"""The Kubernetes base against a platform team's policy linter (checkov), offline: no finding beyond the
exceptions documented in deploy/checkov.yaml (or in an annotation on the resource), each with its reason."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from model_store.settings import REPO_ROOT
from tests.deploy.test_kubernetes import kustomize_build

# Installed apart from the project's environment by `make test` (deploy/security-tools/pyproject.toml says why).
CHECKOV = REPO_ROOT / ".rtml" / "tools" / "security" / "bin" / "checkov"
CONFIG = REPO_ROOT / "deploy" / "checkov.yaml"
# A workload breaking the rules the base follows: the linter must catch it (else a silent linter passes too).
PLANTED = """
apiVersion: apps/v1
kind: Deployment
metadata:
  name: planted
  namespace: realtime-ml
spec:
  selector:
    matchLabels: {app: planted}
  template:
    metadata:
      labels: {app: planted}
    spec:
      containers:
        - name: planted
          image: busybox:1.36
          securityContext:
            privileged: true
            runAsUser: 0
            capabilities:
              add: [NET_ADMIN]
"""


def documented_exceptions() -> dict[str, str]:
    """Each check ``skip-check`` lists, with its reason: the comment above it (or above its group)."""
    reasons: dict[str, str] = {}
    comment: list[str] = []
    reason = ""
    in_list = False
    for line in CONFIG.read_text().splitlines():
        stripped = line.strip()
        if line.startswith("skip-check:"):
            in_list, comment = True, []
        elif in_list and stripped.startswith("#"):
            comment.append(stripped.lstrip("# "))
        elif in_list and stripped.startswith("- "):
            reason = " ".join(comment) if comment else reason
            comment = []
            reasons[stripped[2:].split("#")[0].strip()] = reason
    assert set(reasons) == set(yaml.safe_load(CONFIG.read_text())["skip-check"])
    return reasons


@pytest.fixture(scope="module")
def findings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, list[dict]]]:
    """checkov's failed and skipped checks, by file (``built.yaml``: the base; ``planted.yaml``), from one run
    with the configuration's framework and without its skip list (so stale exceptions show)."""
    if not CHECKOV.exists():
        pytest.fail(f"{CHECKOV} is missing: `make test` installs it (or `make .rtml/tools/security/.synced`)")
    work = tmp_path_factory.mktemp("policy")
    (work / "built.yaml").write_text(kustomize_build())
    (work / "planted.yaml").write_text(PLANTED)
    frameworks = yaml.safe_load(CONFIG.read_text())["framework"]
    done = subprocess.run(
        [
            str(CHECKOV),
            "-d",
            str(work),
            "--framework",
            *frameworks,
            "--skip-download",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        # Offline: no mapping download from the vendor's platform, no update check against PyPI.
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CKV_SKIP_PACKAGE_UPDATE_CHECK": "TRUE"},
        cwd=work,
    )
    assert done.returncode in (0, 1), done.stderr[-3000:]
    results = json.loads(done.stdout)["results"]
    by_file: dict[str, dict[str, list[dict]]] = {}
    for kind in ("failed_checks", "skipped_checks"):
        for check in results.get(kind, []):
            by_file.setdefault(Path(check["file_path"]).name, {}).setdefault(kind, []).append(check)
    return by_file


def test_the_base_breaks_no_policy_beyond_its_documented_exceptions(findings: dict) -> None:
    exceptions = documented_exceptions()
    failed = findings.get("built.yaml", {}).get("failed_checks", [])
    unexpected = sorted(
        {
            f"{c['check_id']} {c['check_name']}: {c['resource']}"
            for c in failed
            if c["check_id"] not in exceptions
        }
    )
    assert not unexpected, "fix these, or document an exception:\n" + "\n".join(unexpected)
    stale = set(exceptions) - {c["check_id"] for c in failed}
    assert not stale, f"exceptions in {CONFIG.name} that no longer apply: remove {sorted(stale)}"


def test_every_exception_says_why(findings: dict) -> None:
    for check, reason in documented_exceptions().items():
        assert re.fullmatch(r"CKV2?_K8S_\d+", check), check
        assert len(reason) > 40, f"{check}: no reason above it in {CONFIG.name}"
    skipped = findings.get("built.yaml", {}).get("skipped_checks", [])
    assert skipped, "the base's annotated exception (prefect-worker's readiness probe) is not seen"
    for check in skipped:
        assert len(check["check_result"].get("suppress_comment") or "") > 20, (
            f"{check['check_id']} on {check['resource']}: no reason"
        )


def test_the_linter_catches_a_privileged_root_container(findings: dict) -> None:
    failed = {c["check_id"] for c in findings.get("planted.yaml", {}).get("failed_checks", [])}
    assert {"CKV_K8S_16", "CKV_K8S_20", "CKV_K8S_22", "CKV_K8S_23", "CKV_K8S_37"} <= failed
