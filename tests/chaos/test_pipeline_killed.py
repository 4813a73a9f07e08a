"""Scenario 4: the feature pipeline SIGKILLed mid offline write and mid materialization, then run again.

The same raw data goes through an uninterrupted run in one home and through killed runs plus one more run in
another: the validated data, the offline store and the online values must end exactly alike, and after every
kill each visible Parquet file must read whole (writes go to hidden files renamed into place).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import redis

from model_store.settings import REPO_ROOT, Settings
from tests.chaos.conftest import FULL, visible_parquet
from tests.conftest import delete_project_keys, make_settings
from tests.fixtures.pipeline import generate_small_raw

# (writer, which of its calls is cut off by SIGKILL)
KILL_POINTS = (
    [("offline", 1), ("offline", 40), ("materialize", 1), ("materialize", 3)]
    if FULL
    else [("offline", 3), ("materialize", 2)]
)


def files_state(settings: Settings) -> dict[str, pd.DataFrame]:
    """Every visible file of the validated data and the offline store, by path, as read."""
    state = {}
    for root in (settings.validated_dir, settings.offline_dir):
        for path in visible_parquet(root):
            state[str(path.relative_to(settings.data_dir))] = pq.read_table(path).to_pandas()
    return state


def online_state(settings: Settings) -> dict[bytes, dict[bytes, bytes]]:
    """Every Feast hash of the project (key without the project's name), field by field."""
    project = settings.feast_project.encode()
    client = redis.Redis.from_url(settings.redis_url)
    try:
        return {
            key.removesuffix(project): client.hgetall(key)
            for key in client.scan_iter(match=f"*{settings.feast_project}", count=1000)
            if not key.startswith(b"rtml:")  # the stream and the processor's state, not online values
        }
    finally:
        client.close()


def run_killed(point: str, n: int, api_url: str, log: Path) -> int:
    with log.open("ab") as output:
        return subprocess.run(
            [sys.executable, "-m", "tests.chaos.killed_pipeline", point, str(n)],
            cwd=REPO_ROOT,
            env={**os.environ, "PREFECT_API_URL": api_url, "PYTHONPATH": str(REPO_ROOT)},
            stdout=output,
            stderr=subprocess.STDOUT,
            timeout=600,
        ).returncode


def test_killed_mid_write_then_run_again_it_ends_as_an_uninterrupted_run(
    tmp_path: Path, prefect_harness: None, monkeypatch: pytest.MonkeyPatch, figures: list[str]
) -> None:
    from prefect.settings import PREFECT_API_URL

    from flows.feature_pipeline import feature_pipeline

    api_url = str(PREFECT_API_URL.value())
    reference = make_settings(tmp_path / "reference", monkeypatch)
    projects = [reference.feast_project]
    try:
        generate_small_raw(reference.raw_dir, end=pd.Timestamp.now(tz="UTC").floor("h"))
        feature_pipeline()
        expected_files, expected_online = files_state(reference), online_state(reference)

        killed = make_settings(tmp_path / "killed", monkeypatch)
        projects.append(killed.feast_project)
        shutil.copytree(reference.raw_dir, killed.raw_dir)
        log = tmp_path / "killed.log"
        for point, n in KILL_POINTS:
            started = time.perf_counter()
            code = run_killed(point, n, api_url, log)
            assert code == -9, f"{point} {n}: exit {code}\n{log.read_text()[-3000:]}"
            hidden = [p for p in killed.data_dir.rglob("*") if p.name.startswith(".") and p.is_file()]
            for path in visible_parquet(killed.data_dir):
                pq.read_metadata(path)  # raises on half a file
            figures.append(
                f"killed mid {point} #{n} after {time.perf_counter() - started:.1f} s: "
                f"{len(visible_parquet(killed.data_dir))} visible files all whole, "
                f"{len(hidden)} hidden partial file(s) left, {len(online_state(killed))} online hashes"
            )
        started = time.perf_counter()
        feature_pipeline()
        figures.append(f"run again: {time.perf_counter() - started:.1f} s")
        files, online = files_state(killed), online_state(killed)
        figures.append(
            f"files: {len(files)} (uninterrupted {len(expected_files)}), online hashes: {len(online)} "
            f"(uninterrupted {len(expected_online)}); differing files "
            f"{sum(not frame.equals(expected_files.get(path)) for path, frame in files.items())}, "
            f"differing hashes {sum(fields != expected_online.get(key) for key, fields in online.items())}"
        )
        assert files.keys() == expected_files.keys()
        for path, frame in files.items():
            pd.testing.assert_frame_equal(frame, expected_files[path], obj=path)
        differing = {
            field
            for key, fields in online.items()
            for field in fields.keys() | expected_online.get(key, {}).keys()
            if fields.get(field) != expected_online.get(key, {}).get(field)
        }
        assert online == expected_online, f"fields differing: {sorted(differing)[:10]}"
    finally:
        for project in projects:
            delete_project_keys(project)
