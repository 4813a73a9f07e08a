"""The GitHub workflow and the pre-commit hooks, validated offline."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from model_store.settings import REPO_ROOT

BIN = Path(sys.executable).parent
WORKFLOWS = sorted((REPO_ROOT / ".github" / "workflows").glob("*.yml"))


def check_workflows(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def ci() -> dict:
    # YAML 1.1 reads the key `on` as True; GitHub reads it as "on".
    spec = yaml.safe_load((REPO_ROOT / ".github" / "workflows" / "ci.yml").read_text())
    spec["on"] = spec.pop(True)
    return spec


def run_lines(job: dict) -> str:
    return "\n".join(step.get("run", "") for step in job["steps"])


def make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][\w-]*):", (REPO_ROOT / "Makefile").read_text(), flags=re.MULTILINE))


def test_workflows_match_the_github_workflow_schema() -> None:
    assert WORKFLOWS
    done = check_workflows(*WORKFLOWS)
    assert done.returncode == 0, done.stdout + done.stderr


def test_schema_check_rejects_a_misspelt_key(tmp_path: Path) -> None:
    broken = tmp_path / "ci.yml"
    broken.write_text(WORKFLOWS[0].read_text().replace("runs-on:", "run-on:", 1))
    assert check_workflows(broken).returncode != 0


def test_pull_requests_lint_test_with_redis_and_postgres_and_plan_feast() -> None:
    spec = ci()
    assert "pull_request" in spec["on"] and spec["on"]["push"]["branches"] == ["main"]
    jobs = spec["jobs"]
    assert "make lint" in run_lines(jobs["lint"])
    test = jobs["test"]
    assert "make test" in run_lines(test)
    services = test["services"]
    assert services["redis"]["image"].startswith("redis:") and "6379:6379" in services["redis"]["ports"]
    assert (
        services["postgres"]["image"].startswith("postgres:") and "5432:5432" in services["postgres"]["ports"]
    )
    # The suite connects as postgres without a password (tests/conftest.py).
    assert services["postgres"]["env"]["POSTGRES_HOST_AUTH_METHOD"] == "trust"
    assert "feast plan" in run_lines(jobs["feast-plan"])
    for name in ("lint", "test", "feast-plan"):
        assert "if" not in jobs[name], f"{name} must run on pull requests"
    assert {"lint", "test"} <= make_targets()


def test_pull_requests_audit_the_locked_dependencies_with_documented_exceptions_only() -> None:
    """pip-audit needs the internet, so CI runs it (make audit), strictly: an unauditable package fails it."""
    audit = ci()["jobs"]["audit"]
    assert "if" not in audit and "make audit" in run_lines(audit)
    assert "audit" in make_targets()
    makefile = (REPO_ROOT / "Makefile").read_text()
    recipe = makefile.split("\naudit:", 1)[1].split("\n\n", 1)[0]
    assert "pip-audit --strict" in recipe
    assert "--frozen --all-groups" in recipe and "--project deploy/security-tools" in recipe
    exceptions = REPO_ROOT / "deploy" / "security-tools" / "audit-exceptions.txt"
    assert "audit-exceptions.txt" in recipe
    for line in exceptions.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            advisory, _, reason = line.partition(" ")
            assert re.fullmatch(r"(GHSA|PYSEC|CVE|OSV)-[\w-]+", advisory), line
            assert len(reason.strip()) > 20, f"{advisory}: no reason"


def test_main_branch_also_builds_the_bento_after_the_checks() -> None:
    bento = ci()["jobs"]["bento"]
    assert "refs/heads/main" in bento["if"] and "push" in bento["if"]
    assert set(bento["needs"]) == {"lint", "test", "feast-plan"}
    assert "bentoml export" in run_lines(bento)
    assert any(step.get("uses", "").startswith("actions/upload-artifact@") for step in bento["steps"])


def test_pre_commit_runs_ruff_as_make_lint_does_and_hygiene_hooks() -> None:
    config = yaml.safe_load((REPO_ROOT / ".pre-commit-config.yaml").read_text())
    hooks = {hook["id"]: hook for repo in config["repos"] for hook in repo["hooks"]}
    assert hooks["ruff"]["entry"].startswith(".venv/bin/ruff check")
    assert hooks["ruff-format"]["entry"].startswith(".venv/bin/ruff format")
    assert {"trailing-whitespace", "end-of-file-fixer", "check-yaml", "check-merge-conflict"} <= set(hooks)
    makefile = (REPO_ROOT / "Makefile").read_text()
    lint = makefile.split("\nlint:", 1)[1].split("\n\n", 1)[0]
    assert ".venv/bin/ruff check" in lint and ".venv/bin/ruff format --check" in lint
