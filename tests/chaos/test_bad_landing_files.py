"""Scenario 7: bad files in the landing zone beside good batches, one real feature-pipeline run.

Each bad file is refused with its name and the reason (``quarantine/refused/<batch>.json``, the run's log) and
the good batches of the same run are ingested in full.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pandas as pd
import pytest

from flows.feature_store.ingestion import find_new_batches
from flows.feature_store.offline_store import read_partitions
from model_store.settings import Settings
from tests.chaos.conftest import FULL
from tests.fixtures.pipeline import generate_small_raw

GIB = 2**30


def land_bad_files(transactions_dir: Path, sample: pd.DataFrame) -> dict[str, str]:
    """Write one file per kind of bad batch; returns batch name -> what its refusal must say."""
    sample = sample.assign(transaction_id=sample["transaction_id"] + "-bad")
    good = transactions_dir / "batch_002.parquet"
    truncated = good.read_bytes()
    (transactions_dir / "bad_truncated.parquet").write_bytes(truncated[: len(truncated) // 2])
    sample.rename(columns={"amount": "amt"}).to_csv(transactions_dir / "bad_header.csv", index=False)
    sample.to_csv(transactions_dir / "bad_delimiter.csv", index=False, sep=";")
    sample.to_csv(transactions_dir / "bad_encoding.csv", index=False, encoding="utf-16")
    (transactions_dir / "bad_empty.csv").write_bytes(b"")
    with (transactions_dir / "bad_huge.csv").open("wb") as huge:
        if FULL:  # a real gigabyte on disk
            block = sample.to_csv(index=False).encode() * 64
            while huge.tell() < GIB:
                huge.write(block)
        else:  # the same size, sparse: refused on its size before it is read
            huge.truncate(GIB)
    return {
        "bad_truncated": "cannot be read as parquet",
        "bad_header": "missing required column(s) amount",
        "bad_delimiter": "missing required column(s)",
        "bad_encoding": "cannot be read as csv",
        "bad_empty": "empty file",
        "bad_huge": "MiB a raw file may hold",
    }


def test_bad_files_are_refused_with_their_reason_and_the_good_batches_proceed(
    settings: Settings, prefect_harness: None, figures: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.feature_pipeline import feature_pipeline

    # Below the default (2 GiB, read a chunk at a time) so that the gigabyte file meets the cap.
    monkeypatch.setenv("RTML_MAX_RAW_FILE_MB", "512")
    tx = generate_small_raw(settings.raw_dir, end=pd.Timestamp.now(tz="UTC").floor("h"))
    reasons = land_bad_files(settings.raw_dir / "transactions", tx.head(200))
    started = time.perf_counter()
    result = feature_pipeline()
    seconds = time.perf_counter() - started

    validated = read_partitions(settings.validated_dir / "transactions", columns=["transaction_id"])
    quarantined = sum(len(pd.read_parquet(p)) for p in settings.quarantine_dir.glob("batch_*.parquet"))
    refused = {
        p.stem: json.loads(p.read_text()) for p in (settings.quarantine_dir / "refused").glob("*.json")
    }
    manifest = json.loads((settings.data_dir / "transactions_manifest.json").read_text())["batches"]
    recorded = {entry["name"]: entry["summary"] for entry in manifest.values()}

    figures.append(
        f"one run, {seconds:.1f} s: {len(tx):,} good rows in 2 batches beside {len(reasons)} bad files"
    )
    for name, record in sorted(refused.items()):
        figures.append(f"{name}: {record['reason'].split(': ', 1)[1][:110]}")
    figures.append(f"ingested: {len(validated):,} rows, {quarantined} quarantined, result {result}")
    assert set(refused) == set(reasons)
    for name, reason in reasons.items():
        assert reason in refused[name]["reason"], refused[name]["reason"]
        assert refused[name]["file"].endswith(name + (".parquet" if name == "bad_truncated" else ".csv"))
        assert recorded[name] == {"refused": refused[name]["reason"]}
    # The good batches are in whole: every generated row is either validated or quarantined with its reason.
    assert len(validated) + quarantined == len(tx)
    assert (
        validated["transaction_id"].is_unique and not validated["transaction_id"].str.endswith("-bad").any()
    )
    assert result["transactions"] == len(validated)
    # Refused content is not read again by the next run (a corrected file is new content).
    assert (
        find_new_batches(settings.raw_dir / "transactions", settings.data_dir / "transactions_manifest.json")
        == []
    )
    assert os.path.getsize(settings.raw_dir / "transactions" / "bad_huge.csv") == GIB
