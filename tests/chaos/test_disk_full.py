"""Scenario 6: the disk under RTML_HOME full (a small tmpfs mounted there, filled up), then space returns.

Each writer fails with an error naming the path it could not write, nothing half-written is visible, and the
work resumes once space returns: the feature pipeline (validated data, quarantine, offline store, manifests) and
the landing writer (raw files from the stream).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from flows.feature_store.offline_store import read_partitions
from model_store.settings import Settings
from tests.chaos.conftest import LogLines, visible_parquet
from tests.conftest import delete_project_keys, make_settings
from tests.fixtures.pipeline import generate_small_raw

DISK_MB = 48


class SmallDisk:
    """A tmpfs of its own, filled with one file until ``free`` bytes are left; ``make_room`` deletes it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / "filler"

    def fill(self, free: int) -> None:
        stats = os.statvfs(self.path)
        with self.filler.open("ab") as handle:
            handle.write(b"\0" * max(0, stats.f_bavail * stats.f_frsize - free))

    def make_room(self) -> None:
        self.filler.unlink()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    mount = tmp_path / "rtml"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield SmallDisk(mount)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def assert_nothing_half_written(root: Path) -> int:
    files = visible_parquet(root)
    for path in files:
        pq.read_metadata(path)  # raises on half a file
    return len(files)


def test_a_full_disk_fails_each_writer_naming_the_path_and_work_resumes_with_space(
    small_disk: SmallDisk,
    prefect_harness: None,
    monkeypatch: pytest.MonkeyPatch,
    figures: list[str],
) -> None:
    from flows.feature_pipeline import feature_pipeline

    settings: Settings = make_settings(small_disk.path, monkeypatch)
    try:
        tx = generate_small_raw(settings.raw_dir, end=pd.Timestamp.now(tz="UTC").floor("h"))
        small_disk.fill(free=256 * 1024)
        with pytest.raises(OSError) as full:
            feature_pipeline()
        visible = assert_nothing_half_written(small_disk.path)
        figures.append(f"feature pipeline on a full disk: {full.value}")
        figures.append(f"visible Parquet files afterwards: {visible}, all whole")
        assert "No space left on device" in str(full.value) and str(small_disk.path) in str(full.value)

        small_disk.make_room()
        result = feature_pipeline()
        validated = read_partitions(settings.validated_dir / "transactions", columns=["transaction_id"])
        figures.append(f"space back: the run completes, {result['transactions']:,} transactions")
        assert validated["transaction_id"].is_unique and len(validated) == len(tx) == result["transactions"]
        assert_nothing_half_written(small_disk.path)

        landed = land_on_full_disk(settings, tx.head(500), small_disk)
        figures.append(landed)
    finally:
        delete_project_keys(settings.feast_project)


def land_on_full_disk(settings: Settings, frame: pd.DataFrame, disk: SmallDisk) -> str:
    """The landing writer on a full disk keeps its rows and acknowledges nothing; with space it lands them all."""
    from services.stream.consumer import Entry
    from services.stream.events import encode, transaction_json, transactions_of
    from services.stream.landing import LandingWriter

    out = settings.raw_dir / "transactions"
    shutil.rmtree(out)
    entries = [
        Entry("s", f"{1_000 + i}-0".encode(), encode(transaction_json(t), "upstream"))
        for i, t in enumerate(transactions_of(frame))
    ]
    writer = LandingWriter(out, flush_seconds=3600)
    disk.fill(free=16 * 1024)

    async def handle() -> None:
        await writer.handle(entries)

    asyncio.run(handle())
    messages = LogLines()
    logging.getLogger("services.stream.landing").addHandler(messages)
    try:
        assert writer.write() == []
    finally:
        logging.getLogger("services.stream.landing").removeHandler(messages)
    assert writer.buffered == len(entries) and assert_nothing_half_written(out) == 0
    error = messages.lines[0]
    assert "No space left on device" in error and str(out) in error
    disk.make_room()
    acknowledged = writer.write()
    files = visible_parquet(out)
    assert acknowledged == entries and len(files) == 1 and len(pd.read_parquet(files[0])) == len(entries)
    return f"landing writer on a full disk: '{error}'; space back: {len(acknowledged)} entries landed and acknowledged"
