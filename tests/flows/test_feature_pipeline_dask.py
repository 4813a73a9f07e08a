"""Scaling out: the same feature pipeline on a local Dask cluster gives the same feature tables."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
from prefect_dask import DaskTaskRunner

from flows.feature_pipeline import feature_pipeline
from flows.feature_store.offline_store import read_partitions
from model_store.settings import REPO_ROOT, Settings
from tests.conftest import make_settings

TABLES = ["customer_activity", "merchant_activity", "merchant_risk", "customer_profile"]


def test_dask_task_runner_gives_identical_tables(
    pipeline_settings: Settings, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = {t: read_partitions(pipeline_settings.offline_dir / t) for t in TABLES}
    raw = pipeline_settings.raw_dir
    # Dask's worker processes import our modules by name.
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    settings = make_settings(tmp_path / "rtml", monkeypatch)
    shutil.copytree(raw, settings.raw_dir)

    runner = DaskTaskRunner(cluster_kwargs={"n_workers": 2, "threads_per_worker": 1, "processes": True})
    summary = feature_pipeline.with_options(task_runner=runner)()

    assert summary["transactions"] == len(read_partitions(settings.validated_dir / "transactions"))
    for table in TABLES:
        got = read_partitions(settings.offline_dir / table)
        keys = [c for c in got.columns if c.endswith("_id")] + ["event_timestamp"]
        pd.testing.assert_frame_equal(
            got.sort_values(keys).reset_index(drop=True),
            expected[table].sort_values(keys).reset_index(drop=True),
            check_like=True,
        )
