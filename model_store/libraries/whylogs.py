"""whylogs 1.6 (unmaintained): two patches that make profiling and reading profiles fast, and its drift module.

What this relies on, all internal to whylogs 1.6.4:

- ``whylogs.core.preprocessing.PreprocessedColumn._pandas_split(self, series, parse_numeric_string)``: the
  method that splits a pandas column into nulls, NaNs, infinities and typed arrays before profiling; it sets
  ``null_count``, ``nan_count``, ``inf_count`` and ``numpy.floats``. Replaced for float64 columns (see
  ``_split_float_columns_at_once``).
- ``whylogs.core.metrics.metric_components.MetricComponent.from_protobuf`` (a classmethod), the component's
  ``_value`` attribute and ``_deserializer`` method: replaced to reuse one class per kind of component (see
  ``_reuse_component_classes``).
- The layout of ``whylogs.viz``: ``whylogs/viz/__init__.py`` imports IPython and pybars3 though its submodule
  ``whylogs.viz.drift.column_drift_algorithms`` needs neither (see ``drift_algorithms``).

The patches change speed, never results: ``tests/model_store/libraries/test_whylogs.py`` compares each with
whylogs' own path. They are applied by ``apply_patches()`` in the processes that profile or read profiles:
the training and drift-report flows (first statement), the service's traffic-log writer process, and the
tests and benchmarks that profile. Without them the same profiles come out, slower.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import TYPE_CHECKING, Any

from model_store.libraries.versions import check_version

if TYPE_CHECKING:
    import pandas as pd

WRITTEN_FOR = "1.6.4"
DRIFT_ALGORITHMS = "whylogs.viz.drift.column_drift_algorithms"
# What the drift maths does not need but whylogs.viz's __init__ imports.
NOTEBOOK_PACKAGES = frozenset({"IPython", "pybars"})

_lock = threading.Lock()


@cache
def require_version() -> None:
    """Fail loudly unless whylogs is installed at ``WRITTEN_FOR`` (checked once per process)."""
    check_version("whylogs", WRITTEN_FOR, __name__)


def apply_patches() -> None:
    """Apply both patches (idempotent, thread-safe); imports whylogs, which is slow the first time."""
    require_version()
    with _lock:
        _split_float_columns_at_once()
        _reuse_component_classes()


def is_patched() -> bool:
    """Whether both patches are in place (``False`` when whylogs is not imported)."""
    preprocessing = sys.modules.get("whylogs.core.preprocessing")
    components = sys.modules.get("whylogs.core.metrics.metric_components")
    if preprocessing is None or components is None:
        return False
    split = preprocessing.PreprocessedColumn._pandas_split
    from_protobuf = components.MetricComponent.from_protobuf.__func__
    return (
        getattr(split, "patched_by", None) == __name__
        and getattr(from_protobuf, "patched_by", None) == __name__
    )


@contextmanager
def unpatched() -> Iterator[None]:
    """whylogs' own code for the time of the block, the patches back after it: what tests and benchmarks
    compare the patches with. Not for serving code: it changes whylogs for every thread of the process."""
    from whylogs.core.metrics.metric_components import MetricComponent
    from whylogs.core.preprocessing import PreprocessedColumn

    split = vars(PreprocessedColumn)["_pandas_split"]
    from_protobuf = vars(MetricComponent)["from_protobuf"]  # the classmethod itself, not a bound method
    if getattr(split, "patched_by", None) == __name__:
        PreprocessedColumn._pandas_split = split.__wrapped__  # type: ignore[method-assign]
    if getattr(from_protobuf.__func__, "patched_by", None) == __name__:
        MetricComponent.from_protobuf = classmethod(from_protobuf.__func__.__wrapped__)  # type: ignore[method-assign, assignment]
    try:
        yield
    finally:
        PreprocessedColumn._pandas_split = split  # type: ignore[method-assign]
        MetricComponent.from_protobuf = from_protobuf  # type: ignore[method-assign]


def _split_float_columns_at_once() -> None:
    """Make whylogs split a float64 column with numpy, not with a Python call per value.

    Before profiling a column whylogs counts its nulls, NaNs and infinities, testing each float for infinity
    through ``Series.apply``, most of a training set's profile. The counts and the array of floats are the same;
    every other dtype takes whylogs' own path.
    """
    import numpy as np
    from whylogs.core.preprocessing import PreprocessedColumn

    original = PreprocessedColumn._pandas_split
    if getattr(original, "patched_by", None) == __name__:
        return

    def _pandas_split(self: Any, series: pd.Series | None, parse_numeric_string: bool = False) -> None:
        if series is None or series.dtype != np.float64:
            return original(self, series, parse_numeric_string)
        values = series.to_numpy()
        missing = np.isnan(values)
        self.null_count = self.nan_count = int(missing.sum())
        floats = values[~missing]
        self.inf_count = int(np.isinf(floats).sum())
        self.numpy.floats = floats
        return None

    _pandas_split.__wrapped__ = original  # type: ignore[attr-defined]
    _pandas_split.patched_by = __name__  # type: ignore[attr-defined]
    PreprocessedColumn._pandas_split = _pandas_split  # type: ignore[method-assign]


def _reuse_component_classes() -> None:
    """Make whylogs reuse one class per kind of metric component it deserializes.

    It defines a new class for every component it reads, most of the time of reading a profile. The class
    depends only on the component's value field and type id, so the first one of each pair is kept.
    Components read through a custom registry take whylogs' own path.
    """
    from whylogs.core.metrics.metric_components import MetricComponent

    original = MetricComponent.from_protobuf.__func__  # type: ignore[attr-defined]
    if getattr(original, "patched_by", None) == __name__:
        return
    classes: dict[tuple[str | None, int], type] = {}

    def from_protobuf(cls: type, msg: Any, registries: Any = None) -> Any:
        if registries is not None:
            return original(cls, msg, registries)
        key = (msg.WhichOneof("value"), msg.type_id)
        known = classes.get(key)
        if known is None:
            component = original(cls, msg, None)
            classes[key] = type(component)
            return component
        component = known(value=None)
        component._value = component._deserializer(msg=msg)
        return component

    from_protobuf.__wrapped__ = original  # type: ignore[attr-defined]
    from_protobuf.patched_by = __name__  # type: ignore[attr-defined]
    MetricComponent.from_protobuf = classmethod(from_protobuf)  # type: ignore[method-assign, assignment]


@cache
def drift_algorithms() -> types.ModuleType:
    """whylogs' drift module (KS, Hellinger, ChiSquare), without the notebook packages ``whylogs.viz`` imports.

    When IPython or pybars3 is not installed, the package ``whylogs.viz`` is entered through a bare module for
    the time of the import, then removed, so a later ``import whylogs.viz`` still runs (or fails) as whylogs
    wrote it.
    """
    require_version()
    try:
        return importlib.import_module(DRIFT_ALGORITHMS)
    except ModuleNotFoundError as error:
        if error.name not in NOTEBOOK_PACKAGES:
            raise
    spec = importlib.util.find_spec("whylogs.viz")
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError(f"whylogs.viz is not installed: whylogs=={WRITTEN_FOR} provides it")
    shell = types.ModuleType("whylogs.viz")
    shell.__path__ = list(spec.submodule_search_locations)
    sys.modules["whylogs.viz"] = shell
    try:
        return importlib.import_module(DRIFT_ALGORITHMS)
    finally:
        sys.modules.pop("whylogs.viz", None)
        import whylogs

        if getattr(whylogs, "viz", None) is shell:
            delattr(whylogs, "viz")
