"""typeguard: ``@typechecked`` made a no-op for Feast's import in our processes, seconds off each one's start.

Feast decorates its definition classes (``FeatureView``, ``FeatureService``, ``Entity``, the data sources)
with typeguard's ``@typechecked``. typeguard 4 instruments each method by re-reading, re-parsing and
recompiling the method's whole module, most of the time ``import feast`` takes (figures: docs/architecture.md,
"Why it is built this way"), in every process that opens a feature store (the demo, each flow run, each
service worker).

Our processes build Feast objects only from the registry, which ``feast apply`` wrote after checking the
definitions: the ``feast`` CLI imports nothing of ours, so apply and plan keep the checks. What is lost is
the argument check on a Feast object built by hand in one of our processes. Only ``typechecked`` is
replaced; ``typeguard.check_type`` (pandera uses it) is untouched. Feast is the only installed package that
uses ``@typechecked``.

It lives here, not in ``feast.py``, because what it replaces and relies on is typeguard's: the module
attribute ``typeguard.typechecked``, which Feast's modules look up when they are imported; the decorator's
two forms (``@typechecked`` and ``@typechecked(...)``); and, to tell an instrumented function, the name
typeguard 4 inserts into instrumented code (``check_argument_types_internal``). A typeguard upgrade can break
it; a Feast upgrade can at most make it pointless (``tests/model_store/libraries/test_typeguard.py`` checks
Feast's classes come out uninstrumented).

Applied by ``apply_patches()``, which must run before Feast is imported (afterwards it changes nothing): by
every flow that opens a feature store as its first statement, the scoring service's ``__init__``, the demo's
``main`` and the benchmark scripts.
"""

from __future__ import annotations

import sys
from functools import cache
from typing import Any

from model_store.libraries.versions import check_version

WRITTEN_FOR = "4.6.0"
# What typeguard 4 makes instrumented code call: its presence tells an instrumented function.
INSTRUMENTATION_MARK = "check_argument_types_internal"


@cache
def require_version() -> None:
    """Fail loudly unless typeguard is installed at ``WRITTEN_FOR`` (checked once per process)."""
    check_version("typeguard", WRITTEN_FOR, __name__)


def _unchecked(target: Any = None, **_options: Any) -> Any:
    """``@typechecked`` and ``@typechecked(...)`` that return what they decorate unchanged."""
    if target is None:
        return _unchecked
    return target


def apply_patches() -> None:
    """Make ``@typechecked`` a no-op for modules imported from now on, if Feast is not imported yet.

    Idempotent. Once Feast is loaded it changes nothing: its classes are already instrumented, and later
    imports keep their checks.
    """
    require_version()
    if "feast" in sys.modules:
        return
    import typeguard

    typeguard.typechecked = _unchecked  # type: ignore[assignment]


def is_patched() -> bool:
    """Whether ``typeguard.typechecked`` is the no-op (``False`` when typeguard is not imported)."""
    module = sys.modules.get("typeguard")
    return module is not None and module.typechecked is _unchecked


def is_instrumented(function: Any) -> bool:
    """Whether typeguard instrumented ``function`` (its code calls typeguard's argument check)."""
    return INSTRUMENTATION_MARK in function.__code__.co_names
