"""Feast in our processes skips typeguard's import-time instrumentation once the entry point patched typeguard;
Feast on its own (the CLI) and Feast imported by a process that did not patch keep it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from model_store.libraries import typeguard, versions
from model_store.settings import REPO_ROOT

PROBE = "from model_store.libraries.typeguard import is_instrumented\nprint(is_instrumented(feast.FeatureView.__init__))"


def run(code: str) -> str:
    """What a fresh interpreter prints after running ``code`` from the repository root."""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    return done.stdout.strip()


def test_feast_imported_after_the_patch_is_uninstrumented() -> None:
    assert (
        run(f"from model_store import libraries\nlibraries.typeguard.apply_patches()\nimport feast\n{PROBE}")
        == "False"
    )


def test_importing_our_packages_patches_nothing() -> None:
    # No import-time side effect: a process that did not call apply_patches keeps typeguard's checks.
    assert (
        run(f"import model_store, model_store.libraries, model_store.settings\nimport feast\n{PROBE}")
        == "True"
    )


def test_feast_imported_first_keeps_its_checks_and_the_patch_changes_nothing() -> None:
    # What `feast apply` and `feast plan` get: they import nothing of ours before Feast.
    code = f"import feast\nfrom model_store import libraries\nlibraries.typeguard.apply_patches()\n{PROBE}"
    code += "\nprint(libraries.typeguard.is_patched())"
    assert run(code).split() == ["True", "False"]


def test_the_replacement_returns_what_it_decorates_in_both_forms() -> None:
    def function(x: int) -> int:
        return x

    assert typeguard._unchecked(function) is function
    assert typeguard._unchecked(collection_check_strategy=None)(function) is function


def test_another_typeguard_version_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    typeguard.require_version.cache_clear()
    monkeypatch.setattr(versions, "installed_version", lambda name: "5.0.0")
    try:
        with pytest.raises(
            versions.LibraryVersionError, match=r"typeguard\.py was written for typeguard 4\.6\.0.* 5\.0\.0"
        ):
            typeguard.apply_patches()
    finally:
        typeguard.require_version.cache_clear()
