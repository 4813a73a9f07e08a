"""Prefect flow ``build_service``: the registry's champion packaged as the bento the scoring service runs from.

Imports the champion (or another alias or version) into BentoML's model store under ``settings.bentoml_home``
and builds a bento from ``services/scorer/bentofile.yaml`` with ``bentoml build``: the service's code, that
exact model and its contract (copied into the bento folder, which is self-contained), and packages pinned to
the versions installed from uv.lock. Serve it with ``BENTOML_HOME=<bentoml_home> bentoml serve
<model_name>:latest`` or ``bentoml serve <bento folder>``, or build the image of deploy/service.Dockerfile. Run locally: ``python -m flows.build_service [--model champion|N]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from pydantic import BaseModel, Field

from model_store import libraries
from model_store.settings import REPO_ROOT, Settings, get_settings

BENTOFILE = REPO_ROOT / "services" / "scorer" / "bentofile.yaml"
TAG_PREFIX = "__tag__:"


class BuildServiceParams(BaseModel):
    """Which registry version to package."""

    model: str = Field("champion", description="An alias of the registered model, or a version number.")
    lock_packages: bool = Field(
        True,
        description="Lock every package, dependencies included, against the package index (a few seconds"
        " more). Off, the bento lists the service's packages pinned to the installed versions only.",
    )


class BentoBuildError(RuntimeError):
    """``bentoml build`` failed; ``lock_failed`` when only locking the packages against the index did."""

    def __init__(self, message: str, lock_failed: bool = False) -> None:
        super().__init__(message)
        self.lock_failed = lock_failed


@dataclass(frozen=True)
class ImportedModel:
    """A registry version stored in BentoML's model store."""

    bento_model_tag: str
    registered_model: str
    version: str


def import_registry_model(settings: Settings, alias_or_version: str) -> ImportedModel:
    """Load a registry version with its contract and store it as the service's BentoML model."""
    from model_store.registry import load_scorer
    from services.scorer.model import save_bento_model

    scorer = load_scorer(alias_or_version, settings)
    stored = save_bento_model(scorer, settings)
    return ImportedModel(str(stored.tag), scorer.name, scorer.version)


def pin_packages(packages: list[str]) -> list[str]:
    """Each requirement pinned to the installed version (the one uv.lock chose), extras kept."""
    from packaging.requirements import Requirement

    pinned = []
    for line in packages:
        requirement = Requirement(line)
        if requirement.specifier or requirement.url:
            pinned.append(line)
            continue
        extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
        pinned.append(f"{requirement.name}{extras}=={metadata.version(requirement.name)}")
    return pinned


def bento_config(
    settings: Settings, imported: ImportedModel, lock_packages: bool = True, template: Path = BENTOFILE
) -> dict[str, Any]:
    """The bentofile for this model: named after the registered model, with its exact tag and pinned packages."""
    config = yaml.safe_load(template.read_text())
    config["name"] = settings.model_name
    config["models"] = [imported.bento_model_tag]
    config["labels"] = {
        **config.get("labels", {}),
        "registered_model": imported.registered_model,
        "model_version": imported.version,
    }
    python = config.setdefault("python", {})
    python["packages"] = pin_packages(python.get("packages", []))
    python["lock_packages"] = lock_packages
    return config


def run_bentoml_build(settings: Settings, config: dict[str, Any]) -> str:
    """``bentoml build`` of the repository with this bentofile into ``settings.bentoml_home``; the bento's tag."""
    env = {
        **os.environ,
        "BENTOML_HOME": str(settings.bentoml_home),
        "BENTOML_DO_NOT_TRACK": "true",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    with tempfile.TemporaryDirectory() as tmp:
        bentofile = Path(tmp) / "bentofile.yaml"
        bentofile.write_text(yaml.safe_dump(config, sort_keys=False))
        result = subprocess.run(
            [sys.executable, "-m", "bentoml", "build", "-f", str(bentofile), "-o", "tag", str(REPO_ROOT)],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
    tags = [line.split(TAG_PREFIX, 1)[1].strip() for line in result.stdout.splitlines() if TAG_PREFIX in line]
    if result.returncode != 0 or not tags:
        output = (result.stderr or result.stdout).strip()
        raise BentoBuildError(
            f"bentoml build failed (exit {result.returncode}) for {config['name']}: {output[-2000:]}",
            lock_failed="Failed to lock PyPI packages" in output,
        )
    return tags[-1]


def bento_path(settings: Settings, bento_tag: str) -> Path:
    name, version = bento_tag.split(":", 1)
    return Path(settings.bentoml_home) / "bentos" / name / version


def embed_model(settings: Settings, bento_tag: str, model_tag: str) -> Path:
    """Copy the model into the bento's own ``models/`` so the bento folder is self-contained.

    BentoML 1.4 bentos only reference models in the store they were built in; served from a folder elsewhere
    (deploy/service.Dockerfile copies the folder into an image) a bento finds its models in ``models/``.
    """
    from services.scorer.model import model_store_path

    target = bento_path(settings, bento_tag) / "models"
    target.mkdir(parents=True, exist_ok=True)
    libraries.bentoml.copy_model(model_tag, model_store_path(settings), target)
    return target.parent


@task
def import_model(alias_or_version: str) -> ImportedModel:
    imported = import_registry_model(get_settings(), alias_or_version)
    get_run_logger().info(
        "%s v%s is BentoML model %s", imported.registered_model, imported.version, imported.bento_model_tag
    )
    return imported


@task
def build_bento(imported: ImportedModel, lock_packages: bool) -> str:
    settings = get_settings()
    config = bento_config(settings, imported, lock_packages)
    try:
        tag = run_bentoml_build(settings, config)
    except BentoBuildError as error:
        if not error.lock_failed:
            raise
        # Locking asks the package index; offline, the pinned top-level packages still describe the service.
        get_run_logger().warning(
            "could not lock packages against the index (%s); building with pins only", error
        )
        config["python"]["lock_packages"] = False
        tag = run_bentoml_build(settings, config)
    path = embed_model(settings, tag, imported.bento_model_tag)
    get_run_logger().info("built bento %s at %s", tag, path)
    return tag


@flow(name="build_service")
def build_service(params: BuildServiceParams | None = None) -> dict[str, str]:
    """Package a registry version (the champion by default) as the scoring service's bento."""
    params = params or BuildServiceParams()
    imported = import_model(params.model)
    bento = build_bento(imported, params.lock_packages)
    return {
        "bento": bento,
        "bento_model": imported.bento_model_tag,
        "registered_model": imported.registered_model,
        "model_version": imported.version,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m flows.build_service", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--model", default="champion", help="alias or version number (default: champion)")
    args = parser.parse_args(argv)
    result = build_service(BuildServiceParams(model=args.model))
    print(f"bento {result['bento']}: {result['registered_model']} v{result['model_version']}")


if __name__ == "__main__":
    main()
