"""Model stores at a path of ours are BentoML's own stores: what we save there BentoML finds by BENTOML_HOME."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from model_store.libraries import bentoml, versions
from model_store.settings import REPO_ROOT


def save(path: Path, name: str = "scorer", text: str = "weights") -> str:
    with bentoml.create_model(path, name, labels={"kind": "test"}, metadata={"n": 1}) as model:
        Path(model.path_of("model.txt")).write_text(text)
    return str(model.tag)


def test_a_saved_model_is_found_by_tag_copied_once_and_seen_by_bentoml_itself(tmp_path: Path) -> None:
    from bentoml.exceptions import NotFound

    home = tmp_path / "bentoml"
    tag = save(home / "models")
    model = bentoml.get_model(home / "models", "scorer:latest")
    assert str(model.tag) == tag and model.info.labels == {"kind": "test"} and model.info.metadata == {"n": 1}
    assert [str(m.tag) for m in bentoml.list_models(home / "models", "scorer")] == [tag]
    with pytest.raises(NotFound):
        bentoml.list_models(home / "models", "other")

    target = tmp_path / "bento" / "models"
    assert bentoml.copy_model(tag, home / "models", target) is True
    assert bentoml.copy_model(tag, home / "models", target) is False
    copied = bentoml.get_model(target, tag)
    assert Path(copied.path_of("model.txt")).read_text() == "weights"

    # BentoML's public API, with BENTOML_HOME pointing at the same folder, sees the same store.
    code = "import bentoml; print(bentoml.models.get('scorer:latest').tag)"
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.stdout.strip() == tag, done.stderr[-2000:]


def test_another_bentoml_version_fails_loudly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    bentoml.require_version.cache_clear()
    monkeypatch.setattr(versions, "installed_version", lambda name: "1.5.0")
    try:
        for call in (
            lambda: bentoml.model_store(tmp_path),
            lambda: save(tmp_path),
            lambda: bentoml.get_model(tmp_path, "x:latest"),
            lambda: bentoml.copy_model("x:1", tmp_path, tmp_path / "b"),
        ):
            with pytest.raises(versions.LibraryVersionError, match=r"bentoml 1\.4\.39, but bentoml 1\.5\.0"):
                call()
    finally:
        bentoml.require_version.cache_clear()
