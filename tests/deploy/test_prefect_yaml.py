"""prefect.yaml, checked offline: the deployments of docs/architecture.md and of ``flows/deployments.py``, their
schedules, pools, pull step, the events training reacts to, default parameters validated by each flow's own
parameter schema (the pydantic models in the flows), and the library patches each flow applies before its
tasks import the libraries."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from typing import Any, get_args

import pytest
import yaml

from flows import deployments as names
from flows.deployments import declared_deployments as deployments
from model_store.settings import REPO_ROOT
from tests.conftest import leading_patches

# On-demand deployments whose flows need a value no default can give: what a run passes (docs/deployment.md).
RUN_TIME_PARAMETERS = {
    names.BATCH_SCORING: {"params": {"input_path": "/data/transactions.parquet"}},
}
# The one module allowed to spell a deployment or pool name.
NAME_OWNERS = {"flows/deployments.py"}
# The patches of model_store.libraries each flow needs: typeguard's before its tasks import Feast, whylogs' for
# profiling or reading profiles (docs/architecture.md, "Library patches and private APIs").
PATCHES = {
    "feature_pipeline": ["typeguard"],
    "training_pipeline": ["typeguard", "whylogs"],
    "batch_scoring": ["typeguard"],
    "drift_report": ["whylogs"],
    "build_service": [],
}


def spec() -> dict[str, Any]:
    return yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())


def contract_deployments() -> set[str]:
    """The ``flow/deployment`` names docs/architecture.md promises."""
    text = (REPO_ROOT / "docs" / "architecture.md").read_text()
    section = text.split("## Prefect deployments", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"`(\w+/[\w-]+)`", section))


def load_flow(entrypoint: str) -> Any:
    from prefect.flows import load_flow_from_entrypoint

    return load_flow_from_entrypoint(str(REPO_ROOT / entrypoint))


def test_every_contract_deployment_is_declared() -> None:
    assert set(deployments()) == contract_deployments()


def test_the_names_python_uses_are_the_deployments_declared() -> None:
    assert set(names.DEPLOYMENTS) == set(deployments())
    assert {d["work_pool"]["name"] for d in deployments().values()} == {names.WORK_POOL}


def test_no_other_module_spells_a_deployment_name() -> None:
    """A name copied into a second module would drift from prefect.yaml unnoticed: they import it instead."""
    spelled = {*names.DEPLOYMENTS, *(d.split("/")[1] for d in names.DEPLOYMENTS), names.WORK_POOL}
    found = []
    for folder in ("flows", "services", "model_store", "deploy", "tests"):
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            relative = path.relative_to(REPO_ROOT).as_posix()
            if relative in NAME_OWNERS:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and node.value in spelled:
                    found.append(f"{relative}:{node.lineno}: {node.value!r}")
    assert not found, "import these from flows/deployments.py:\n" + "\n".join(found)


def test_training_reacts_to_the_events_the_drift_report_emits() -> None:
    from flows.monitoring.triggers import Alert, Condition

    (trigger,) = deployments()[names.TRAINING_PIPELINE]["triggers"]
    emitted = {Alert(condition, "fraud_scorer", "1", "").event_name for condition in get_args(Condition)}
    assert set(trigger["expect"]) == emitted
    assert trigger["match"] == {"prefect.resource.id": "rtml.model.*"}


@pytest.mark.parametrize("name", sorted(contract_deployments()))
def test_entrypoint_is_the_flow_of_its_name_and_defaults_validate(name: str) -> None:
    from prefect.utilities.callables import parameter_schema

    deployment = deployments()[name]
    path, function = deployment["entrypoint"].split(":")
    assert path == f"flows/{function}.py", "one flow per file, named after the flow"
    flow = load_flow(deployment["entrypoint"])
    assert flow.name == name.split("/")[0]
    parameters = deployment.get("parameters") or {}
    # What the server enforces (enforce_parameter_schema) and what the flow run validates on start.
    schema = parameter_schema(flow).model_dump_for_openapi()
    assert set(parameters) <= set(schema["properties"]), f"unknown parameters {set(parameters)}"
    if name in RUN_TIME_PARAMETERS:
        assert not deployment.get("schedules") and not deployment.get("triggers"), "nothing to run it with"
        parameters = {**parameters, **RUN_TIME_PARAMETERS[name]}
    flow.validate_parameters(parameters)


def test_parameter_validation_rejects_a_bad_default() -> None:
    from prefect.exceptions import ParameterTypeError

    flow = load_flow(deployments()[names.FEATURE_PIPELINE]["entrypoint"])
    with pytest.raises(ParameterTypeError, match="max_invalid_fraction"):
        flow.validate_parameters({"params": {"max_invalid_fraction": 2}})


def test_schedules_match_each_flows_cadence() -> None:
    found = deployments()

    def crons(name: str) -> list[str]:
        return [s["cron"] for s in found[name].get("schedules") or []]

    assert crons(names.FEATURE_PIPELINE) == ["0 * * * *"]
    assert crons(names.DRIFT_REPORT) == ["15 * * * *"]
    (weekly,) = crons(names.TRAINING_PIPELINE)
    assert weekly.split()[2:4] == ["*", "*"] and weekly.split()[4] != "*", "weekly: one day of the week"
    assert found[names.TRAINING_PIPELINE]["triggers"], "training also starts on a trigger"
    assert not crons(names.BATCH_SCORING) and not crons(names.BUILD_SERVICE)


def test_work_pool_pull_step_and_documented_alternatives() -> None:
    declared = spec()
    for name, deployment in deployments().items():
        assert deployment["work_pool"]["name"] == names.WORK_POOL, name
    (pull,) = declared["pull"]
    assert list(pull) == ["prefect.deployments.steps.set_working_directory"]
    build_ids = {step[next(iter(step))].get("id") for step in declared["build"]}
    template = pull["prefect.deployments.steps.set_working_directory"]["directory"]
    assert re.fullmatch(r"\{\{ ([\w-]+)\.stdout \}\}", template).group(1) in build_ids
    pools = declared["definitions"]["work_pools"]
    assert {"local_process", "docker", "kubernetes"} <= set(pools)
    assert pools["docker"]["job_variables"]["image"] == pools["kubernetes"]["job_variables"]["image"]


@pytest.mark.parametrize("name", sorted(contract_deployments()))
def test_each_flow_applies_its_library_patches_first(name: str) -> None:
    flow = load_flow(deployments()[name]["entrypoint"])
    assert leading_patches(flow.fn) == PATCHES[flow.name]


def test_loading_the_flows_as_a_worker_does_imports_no_patched_library() -> None:
    """So a flow's first statements patch before anything imports Feast or whylogs (3-4 s of Feast's import)."""
    entrypoints = [str(REPO_ROOT / d["entrypoint"]) for d in deployments().values()]
    code = f"""
import json, sys
from prefect.flows import load_flow_from_entrypoint
from model_store import libraries
for entrypoint in {entrypoints!r}:
    load_flow_from_entrypoint(entrypoint)
print(json.dumps([[m for m in ("feast", "whylogs") if m in sys.modules], libraries.typeguard.is_patched()]))
"""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    assert json.loads(done.stdout.splitlines()[-1]) == [[], False]
