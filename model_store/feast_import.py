"""Feast without typeguard's import-time instrumentation in our processes: 4 s off each one's start.

Feast decorates its definition classes (``FeatureView``, ``FeatureService``, ``Entity``, the data sources)
with typeguard's ``@typechecked``. typeguard 4 instruments each method by re-reading, re-parsing and
recompiling the method's whole module: 242 times during ``import feast``, 4.0 of its 5.2 s measured here, in
every process that opens a feature store (the demo, each flow run, each service worker).

Our processes build Feast objects only from the registry, which ``feast apply`` wrote after checking the
definitions: the ``feast`` CLI imports nothing of ours, so apply and plan keep the checks. What is lost is
the argument check on a Feast object built by hand in one of our processes. Only ``typechecked`` is
replaced; ``typeguard.check_type`` (pandera uses it) is untouched.
"""

from __future__ import annotations

import sys
from typing import Any

# Feast's functions whose instrumented code names this helper (what typeguard 4 inserts).
INSTRUMENTATION_MARK = "check_argument_types_internal"


def _unchecked(target: Any = None, **_options: Any) -> Any:
    """``@typechecked`` and ``@typechecked(...)`` that return what they decorate unchanged."""
    if target is None:
        return _unchecked
    return target


def skip_type_instrumentation() -> None:
    """Make ``@typechecked`` a no-op for Feast modules imported from now on (none, once Feast is loaded)."""
    if "feast" not in sys.modules:
        import typeguard

        typeguard.typechecked = _unchecked


def is_instrumented(function: Any) -> bool:
    """Whether typeguard instrumented ``function`` (its code calls typeguard's argument check)."""
    return INSTRUMENTATION_MARK in function.__code__.co_names
