"""whylogs' patches give what whylogs' own code gives, are applied only when asked, and check the version."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from model_store.libraries import versions, whylogs
from model_store.profiles import profile_frame, read_profile
from model_store.settings import REPO_ROOT

pytestmark = pytest.mark.usefixtures("whylogs_patches")


def make_frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "amount": rng.lognormal(3, 1, n),
            "channel": rng.choice(["chip", "contactless", "online"], n),
            "hour_of_day": rng.integers(0, 24, n),
            "score": rng.random(n),
        }
    ).assign(flag=lambda f: f["score"] > 0.5, note=None)


def test_importing_patches_nothing_and_apply_patches_patches_once() -> None:
    code = """
import model_store, model_store.libraries.whylogs
import whylogs as why
from whylogs.core.preprocessing import PreprocessedColumn
from model_store.libraries import whylogs
print(whylogs.is_patched())
whylogs.apply_patches()
first = PreprocessedColumn._pandas_split
whylogs.apply_patches()
print(whylogs.is_patched(), PreprocessedColumn._pandas_split is first)
"""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.split() == ["False", "True", "True"]


# whylogs' running mean and variance meet +inf and -inf, on either path.
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_float_columns_split_at_once_profile_as_whylogs_own_split_does() -> None:
    frame = make_frame(150)
    frame.loc[[3, 7, 11], "amount"] = [np.nan, np.inf, -np.inf]
    frame.loc[:40, "score"] = np.nan
    frame["all_missing"] = np.nan
    assert whylogs.is_patched()
    ours = profile_frame(frame)
    with whylogs.unpatched():
        assert not whylogs.is_patched()
        whylogs_own = profile_frame(frame)
    assert whylogs.is_patched()
    amount = ours.get_column("amount").to_summary_dict()
    assert (amount["counts/null"], amount["counts/nan"], amount["counts/inf"]) == (1, 1, 2)
    # Under 200 values whylogs' sketches hold every value: equal profiles have equal summaries.
    pd.testing.assert_frame_equal(
        ours.to_pandas().sort_index(axis=1), whylogs_own.to_pandas().sort_index(axis=1)
    )


def test_read_profile_reuses_component_classes_and_reads_what_whylogs_reads() -> None:
    frame = make_frame(500)
    written = profile_frame(frame)
    data = written.serialize()
    first, second = read_profile(data), read_profile(data)
    with whylogs.unpatched():
        whylogs_own = read_profile(data)

    def summary(view: object) -> tuple[pd.DataFrame, dict]:
        table = view.to_pandas().sort_index(axis=1)
        items = table.pop("frequent_items/frequent_strings")  # ties come back in any order
        return table, {c: sorted((i.value, i.est) for i in v) for c, v in items.dropna().items()}

    expected, expected_items = summary(whylogs_own)
    for view in (written, first, second):
        table, items = summary(view)
        pd.testing.assert_frame_equal(table, expected)
        assert items == expected_items
    # whylogs alone defines a new class per component read; the second read reuses the first one's.
    mean = [v.get_column("amount").get_metric("distribution").mean for v in (first, second, whylogs_own)]
    assert type(mean[0]) is type(mean[1])
    assert type(mean[2]) is not type(mean[0])
    merged = first.merge(second).get_column("amount").to_summary_dict()
    assert merged["counts/n"] == 1000
    assert merged["distribution/mean"] == pytest.approx(frame["amount"].mean())


def test_drift_algorithms_leaves_whylogs_viz_as_whylogs_wrote_it() -> None:
    code = """
import importlib.util, sys
from model_store.libraries import whylogs
algorithms = whylogs.drift_algorithms()
notebook = all(importlib.util.find_spec(m) for m in ("IPython", "pybars"))
print(hasattr(algorithms, "KS") and hasattr(algorithms, "Hellinger"))
print(("whylogs.viz" in sys.modules) == notebook)  # the stand-in is gone
try:
    import whylogs.viz
    print(notebook)
except ModuleNotFoundError as error:
    print(not notebook and error.name in ("IPython", "pybars"))
"""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.split() == ["True", "True", "True"]


def test_another_whylogs_version_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    whylogs.require_version.cache_clear()
    whylogs.drift_algorithms.cache_clear()
    monkeypatch.setattr(versions, "installed_version", lambda name: "1.7.0")
    try:
        for call in (whylogs.apply_patches, whylogs.drift_algorithms):
            with pytest.raises(versions.LibraryVersionError, match=r"whylogs 1\.6\.4, but whylogs 1\.7\.0"):
                call()
    finally:
        whylogs.require_version.cache_clear()
