"""Feast in our processes skips typeguard's import-time instrumentation; Feast on its own (the CLI) keeps it."""

from __future__ import annotations

import subprocess
import sys

from model_store.feast_import import _unchecked
from model_store.settings import REPO_ROOT

PROBE = (
    "from model_store.feast_import import is_instrumented; print(is_instrumented(feast.FeatureView.__init__))"
)


def instrumented_after(imports: str) -> bool:
    """Whether FeatureView's constructor is instrumented in a fresh interpreter after ``imports``."""
    done = subprocess.run(
        [sys.executable, "-c", f"{imports}\n{PROBE}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout.strip() == "True"


def test_a_process_of_ours_imports_feast_uninstrumented() -> None:
    assert instrumented_after("import model_store\nimport feast") is False


def test_feast_imported_first_keeps_its_checks() -> None:
    # What `feast apply` and `feast plan` get: they import nothing of ours before Feast.
    assert instrumented_after("import feast\nimport model_store") is True


def test_the_replacement_returns_what_it_decorates_in_both_forms() -> None:
    def function(x: int) -> int:
        return x

    assert _unchecked(function) is function
    assert _unchecked(collection_check_strategy=None)(function) is function
