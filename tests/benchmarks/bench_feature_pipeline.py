"""Feature pipeline at the demo size: rows/s per stage, and our Redis materialization beside Feast's own.

Run: `.venv/bin/python tests/benchmarks/bench_feature_pipeline.py [--transactions N]` (make bench runs it).
Uses a temporary home and its own Feast projects on the configured Redis, and deletes their keys after.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


@contextmanager
def timed(label: str, rows: int, figures: list[tuple[str, int, float]]):
    start = time.perf_counter()
    yield
    figures.append((label, rows, time.perf_counter() - start))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--transactions", type=int, default=1_000_000)
    parser.add_argument(
        "--skip-feast", action="store_true", help="skip Feast's own materialize (minutes at 10M transactions)"
    )
    args = parser.parse_args()
    n = args.transactions
    home = Path(tempfile.mkdtemp(prefix="bench_features_"))
    project = f"bench_{uuid.uuid4().hex[:8]}"
    os.environ.update({"RTML_HOME": str(home), "RTML_FEAST_PROJECT": project})

    from model_store import libraries

    libraries.typeguard.apply_patches()  # before Feast is imported, as the flows do

    from prefect import flow

    from flows import feature_pipeline as fp
    from flows.feature_store.materialize import latest_per_entity, materialize_frames
    from flows.fraud_data.generator import GeneratorConfig, generate_raw_data, write_raw_data
    from flows.settings import get_flow_settings
    from model_store.settings import clear_settings, get_settings
    from tests.conftest import delete_project_keys

    settings = get_settings()
    figures: list[tuple[str, int, float]] = []
    config = GeneratorConfig(
        n_transactions=n,
        n_customers=max(n // 20, 100),
        n_merchants=max(n // 200, 20),
        start=pd.Timestamp.now(tz="UTC").floor("D") - pd.Timedelta(days=90),
    )
    with timed("generate", n, figures):
        data = generate_raw_data(config)
        write_raw_data(data, settings.raw_dir, "batch_001")
    limit = get_flow_settings().max_invalid_fraction

    @flow(name="bench_feature_stages")
    def stages() -> fp.FeatureRows:
        """The pipeline's stages one by one, timed (the flow itself runs them without timings)."""
        with timed("ingest+validate reference tables", len(data.customers) + len(data.merchants), figures):
            reference = fp.ingest_reference_tables(settings, limit)
        with timed("ingest+validate transactions", n, figures):
            ingested = fp.ingest_transactions(settings, reference, limit)
        with timed("compute features", n, figures):
            rows = fp.compute_features(settings, reference, ingested)
        with timed("write offline store", sum(len(f) for f in rows.all().values()), figures):
            fp.write_offline_store(settings, rows, "batch_001")
        return rows

    rows = stages()
    settings.export_feast_env()
    feast = Path(sys.executable).with_name("feast")
    with timed("feast apply", 0, figures):
        subprocess.run(
            [str(feast), "-c", str(settings.feast_repo_path), "apply"], check=True, capture_output=True
        )
    store = settings.feature_store()
    frames = rows.all()
    entities = sum(
        len(
            latest_per_entity(
                frame, [c.name for c in store.get_feature_view(view).entity_columns], "event_timestamp"
            )
        )
        for view, frame in frames.items()
    )
    end = pd.Timestamp.now(tz="UTC").to_pydatetime()
    with timed("materialize (ours) -> Redis", entities, figures):
        materialize_frames(store, frames, end=end)

    if args.skip_feast:
        report(n, data, figures)
        delete_project_keys(project)
        return
    # Feast's own materialize over the same offline rows, into a second project.
    feast_project = f"{project}_feast"
    os.environ["RTML_FEAST_PROJECT"] = feast_project
    clear_settings()
    feast_settings = get_settings()
    feast_settings.export_feast_env()
    os.environ["FEAST_OFFLINE_DIR"] = str(settings.offline_dir)
    subprocess.run(
        [str(feast), "-c", str(settings.feast_repo_path), "apply"], check=True, capture_output=True
    )
    feast_store = feast_settings.feature_store()
    start = min(f["event_timestamp"].min() for f in frames.values()).to_pydatetime()
    with timed("materialize (Feast) -> Redis", entities, figures):
        feast_store.materialize(start_date=start, end_date=end, feature_views=list(frames))

    report(n, data, figures)
    ours = next(f for f in figures if f[0].startswith("materialize (ours)"))
    theirs = next(f for f in figures if f[0].startswith("materialize (Feast)"))
    print(f"materialization speed-up over Feast: {theirs[2] / ours[2]:.1f}x")
    delete_project_keys(project)
    delete_project_keys(feast_project)


def report(n: int, data, figures: list[tuple[str, int, float]]) -> None:
    print(
        f"\nfeature pipeline at {n:,} transactions ({len(data.customers):,} customers, {len(data.merchants):,} merchants)"
    )
    print(f"{'stage':38s} {'rows':>12s} {'seconds':>9s} {'rows/s':>12s}")
    for label, count, seconds in figures:
        rate = f"{count / seconds:,.0f}" if count else "-"
        print(f"{label:38s} {count:12,d} {seconds:9.2f} {rate:>12s}")


if __name__ == "__main__":
    main()
