"""The build_service flow packages the registry's champion as a self-contained bento of the scoring service."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flows.build_service import (
    BENTOFILE,
    BuildServiceParams,
    ImportedModel,
    bento_config,
    bento_path,
    build_service,
    import_registry_model,
    pin_packages,
)
from model_store import libraries
from model_store.registry import NoChampionError
from model_store.settings import Settings
from tests.services.champion import log_synthetic_champion


def test_packages_are_pinned_to_the_installed_versions() -> None:
    from importlib import metadata

    pinned = pin_packages(["catboost", "feast[redis,duckdb]", "numpy>=2"])
    assert pinned == [
        f"catboost=={metadata.version('catboost')}",
        f"feast[duckdb,redis]=={metadata.version('feast')}",
        "numpy>=2",
    ]


def test_bento_config_names_the_model_and_its_exact_tag(settings: Settings) -> None:
    imported = ImportedModel("fraud_scorer:abc123", "fraud_scorer", "7")
    config = bento_config(settings, imported)
    assert config["service"] == "services.scorer.service:OnlineScorer"
    assert config["name"] == settings.model_name
    assert config["models"] == ["fraud_scorer:abc123"]
    assert config["labels"]["model_version"] == "7"
    assert all("==" in p for p in config["python"]["packages"])
    assert "flows/" in config["exclude"]  # a bento must not ship Prefect
    assert config["python"]["lock_packages"] is True
    assert bento_config(settings, imported, lock_packages=False)["python"]["lock_packages"] is False
    assert yaml.safe_load(BENTOFILE.read_text())["models"] == ["fraud_scorer:latest"]


def test_without_a_champion_the_import_says_what_to_run(settings: Settings) -> None:
    with pytest.raises(NoChampionError, match="run the training pipeline"):
        import_registry_model(settings, "champion")


def test_flow_builds_a_self_contained_bento_of_the_champion(
    settings: Settings, prefect_harness: None
) -> None:
    version = log_synthetic_champion(settings)
    result = build_service(BuildServiceParams())
    assert result["registered_model"] == settings.model_name and result["model_version"] == version
    name, _ = result["bento"].split(":")
    assert name == settings.model_name

    folder = bento_path(settings, result["bento"])
    info = yaml.safe_load((folder / "bento.yaml").read_text())
    assert info["service"] == "services.scorer.service:OnlineScorer"
    assert info["labels"]["model_version"] == version
    assert [m["tag"] for m in info["models"]] == [result["bento_model"]]
    sources = {p.relative_to(folder / "src").as_posix() for p in (folder / "src").rglob("*.py")}
    assert {"services/scorer/service.py", "model_store/settings.py"} <= sources
    assert not any(s.startswith(("flows/", "tests/")) for s in sources)
    assert (folder / "src" / "feature_repo" / "feature_store.yaml").exists()
    requirements = (folder / "env" / "python" / "requirements.txt").read_text()
    assert "catboost==" in requirements and "bentoml==" in requirements

    # The model travels inside the bento, with the contract the service reads.
    stored = libraries.bentoml.get_model(folder / "models", result["bento_model"])
    assert Path(stored.path_of("model.cbm")).exists()
    assert stored.info.metadata["contract"]["features"] == ["amount", "channel"]
    assert stored.info.metadata["model_version"] == version
