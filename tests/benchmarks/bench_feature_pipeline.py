"""Feature pipeline from 1 to 100 million transactions: time, rows/s and peak memory per stage and process.

Run: `.venv/bin/python tests/benchmarks/bench_feature_pipeline.py [--transactions N] [--dask-workers 2]`
(make bench runs it at 1M). The data is generated first, in slices of at most ``--slice`` transactions, each
in a process of its own and not timed, so generation's memory counts against no stage. The stages are the
pipeline's tasks, run one by one in a flow on the threads task runner, or on a local Dask cluster of
``--dask-workers`` worker processes. Peak memory is each process's maximum resident set (the flow's process,
and each Dask worker). Uses a temporary home and its own Feast project on the configured Redis, and deletes
its keys after. ``--feast-materialize`` also times Feast's own materialize for comparison (minutes at 10M).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
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

DAYS = 90


def peak_rss_gib() -> float:
    """This process's peak resident memory (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


@contextmanager
def timed(label: str, rows: int, figures: list[tuple[str, int, float, float]]):
    start = time.perf_counter()
    yield
    figures.append((label, rows, time.perf_counter() - start, peak_rss_gib()))


def generate_slice(raw_dir: Path, n: int, part: int, parts: int, seed: int) -> None:
    """One slice of the period (``part`` of ``parts``), written as its own raw transactions file.

    Every slice draws the same customers and merchants (the generator's slices share the population), so they
    write the same reference tables and a card's habits and hidden risk carry from one slice to the next.
    """
    from flows.fraud_data.generator import GeneratorConfig, generate_raw_data, write_raw_data

    end = pd.Timestamp.now(tz="UTC").floor("D")
    config = GeneratorConfig(
        n_transactions=n,
        n_customers=max(n // 20, 100),
        n_merchants=max(n // 200, 20),
        start=end - pd.Timedelta(days=DAYS),
        days=DAYS,
        seed=seed,
    )
    write_raw_data(generate_raw_data(config, part, parts), raw_dir, f"batch_{part:03d}")


def generate(home: Path, n: int, slice_rows: int) -> None:
    """Generate ``n`` transactions in slices, each in a process of its own."""
    needed = max(1, -(-n // slice_rows))
    parts = next((p for p in range(needed, DAYS + 1) if DAYS % p == 0), needed)  # whole days per slice
    started = time.perf_counter()
    for part in range(parts):
        slice_args = [str(n), str(part), str(parts), "42"]
        subprocess.run(
            [sys.executable, __file__, "--home", str(home), "--generate-slice", *slice_args], check=True
        )
    print(
        f"generated {n:,} transactions in {parts} file(s) in {time.perf_counter() - started:.0f} s (not timed)"
    )


def link_raw(source: Path, raw_dir: Path, n: int) -> int:
    """Hard-link the reference tables and the first transactions files holding ``n`` rows; returns their rows."""
    import pyarrow.parquet as pq

    (raw_dir / "transactions").mkdir(parents=True, exist_ok=True)
    for name in ("customers.parquet", "merchants.parquet"):
        os.link(source / name, raw_dir / name)
    rows = 0
    for path in sorted((source / "transactions").glob("*.parquet")):
        if rows >= n:
            break
        os.link(path, raw_dir / "transactions" / path.name)
        rows += pq.read_metadata(path).num_rows
    print(f"reusing {rows:,} generated transactions from {source}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--transactions", type=int, default=1_000_000)
    parser.add_argument("--slice", type=int, default=10_000_000, help="transactions generated per process")
    parser.add_argument(
        "--dask-workers", type=int, default=0, help="run on a local Dask cluster of N workers"
    )
    parser.add_argument("--shard-rows", type=int, default=2_000_000)
    parser.add_argument("--parallel-shards", type=int, default=2)
    parser.add_argument("--chunk-rows", type=int, default=1_000_000)
    parser.add_argument("--home", type=Path, help="keep the run's files here (default: a temporary folder)")
    parser.add_argument("--feast-materialize", action="store_true", help="also time Feast's own materialize")
    parser.add_argument("--generate-slice", nargs=4, type=int, metavar=("N", "PART", "PARTS", "SEED"))
    parser.add_argument(
        "--generate-only", action="store_true", help="generate the raw files into --home, stop"
    )
    parser.add_argument(
        "--raw",
        type=Path,
        help="reuse raw files generated earlier (--generate-only): the reference tables and the first "
        "transactions files holding --transactions rows",
    )
    args = parser.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="bench_features_"))
    if args.generate_slice:
        generate_slice(home / "data" / "raw", *args.generate_slice)
        return

    n = args.transactions
    project = f"bench_{uuid.uuid4().hex[:8]}"
    os.environ.update({"RTML_HOME": str(home), "RTML_FEAST_PROJECT": project})
    # bench_training.py --home HOME --project PROJECT trains on what this run leaves (with --home).
    print(f"home {home}, Feast project {project}")
    if args.raw:
        n = link_raw(args.raw, home / "data" / "raw", n)
    else:
        generate(home, n, args.slice)
    if args.generate_only:
        return

    from model_store import libraries

    libraries.typeguard.apply_patches()  # before Feast is imported, as the flows do

    from prefect import flow

    from flows import feature_pipeline as fp
    from flows.feature_store.materialize import materialize_frames
    from flows.settings import get_flow_settings
    from model_store.settings import clear_settings
    from tests.conftest import delete_project_keys

    settings = get_flow_settings()
    settings.export_feast_env()
    figures: list[tuple[str, int, float, float]] = []
    limit = settings.max_invalid_fraction
    feast = Path(sys.executable).with_name("feast")
    with timed("feast apply", 0, figures):
        subprocess.run(
            [str(feast), "-c", str(settings.feast_repo_path), "apply"], check=True, capture_output=True
        )

    @flow(name="bench_feature_stages")
    def stages() -> dict:
        """The pipeline's stages one by one, timed (the flow itself runs them without timings)."""
        with timed("ingest+validate reference tables", 0, figures):
            reference = fp.ingest_reference_tables(settings, limit)
        with timed("ingest+validate transactions", n, figures):
            ingested = fp.ingest_transactions(settings, reference, limit, args.chunk_rows)
        windows = fp.read_window_definitions(settings)
        run_name = fp._run_name(ingested, reference)
        with timed("compute features (+ window tables' offline writes)", n, figures):
            rows = fp.compute_features(
                settings, reference, ingested, windows, run_name, args.shard_rows, args.parallel_shards
            )
        with timed("write offline store (risk, profiles)", n, figures):
            fp.write_offline_store(settings, rows, run_name)
        frames = rows.all()
        end = pd.Timestamp.now(tz="UTC").to_pydatetime()
        started = time.perf_counter()
        written = materialize_frames(settings.feature_store(), frames, end=end)
        entities = sum(view.entities_written for view in written)
        figures.append(
            ("materialize -> Redis (entities)", entities, time.perf_counter() - started, peak_rss_gib())
        )
        return frames

    workers: dict[str, float] = {}
    if args.dask_workers:
        from dask.distributed import Client, LocalCluster
        from prefect_dask import DaskTaskRunner

        os.environ["PYTHONPATH"] = str(ROOT)  # Dask's worker processes import our modules by name
        cluster = LocalCluster(
            n_workers=args.dask_workers, threads_per_worker=1, processes=True, memory_limit=0
        )
        frames = stages.with_options(task_runner=DaskTaskRunner(address=cluster.scheduler_address))()
        with Client(cluster) as client:
            workers = client.run(peak_rss_gib)
        cluster.close()
    else:
        frames = stages()

    report(n, figures, workers, args)
    if args.feast_materialize:
        feast_materialize(settings, frames, feast, project)
        clear_settings()
    delete_project_keys(project)
    if args.home is None:
        shutil.rmtree(home, ignore_errors=True)


def feast_materialize(settings, frames: dict, feast: Path, project: str) -> None:
    """Feast's own materialize over the same offline rows, into a second project."""
    from model_store.settings import clear_settings, get_settings
    from tests.conftest import delete_project_keys

    feast_project = f"{project}_feast"
    os.environ["RTML_FEAST_PROJECT"] = feast_project
    clear_settings()
    feast_settings = get_settings()
    feast_settings.export_feast_env()
    os.environ["FEAST_OFFLINE_DIR"] = str(settings.offline_dir)
    subprocess.run(
        [str(feast), "-c", str(settings.feast_repo_path), "apply"], check=True, capture_output=True
    )
    store = feast_settings.feature_store()
    start = min(f["event_timestamp"].min() for f in frames.values()).to_pydatetime()
    began = time.perf_counter()
    store.materialize(
        start_date=start, end_date=pd.Timestamp.now(tz="UTC").to_pydatetime(), feature_views=list(frames)
    )
    print(f"Feast's own materialize: {time.perf_counter() - began:.1f} s")
    delete_project_keys(feast_project)


def report(n: int, figures: list[tuple[str, int, float, float]], workers: dict[str, float], args) -> None:
    runner = f"Dask, {args.dask_workers} workers" if args.dask_workers else "threads"
    print(
        f"\nfeature pipeline at {n:,} transactions ({runner}; shards of {args.shard_rows:,} events, "
        f"{args.parallel_shards} at once; chunks of {args.chunk_rows:,} rows)"
    )
    print(f"{'stage':52s} {'rows':>13s} {'seconds':>9s} {'rows/s':>11s} {'peak GiB':>9s}")
    for label, count, seconds, peak in figures:
        rate = f"{count / seconds:,.0f}" if count else "-"
        print(f"{label:52s} {count:13,d} {seconds:9.1f} {rate:>11s} {peak:9.2f}")
    pipeline = [f for f in figures if f[0] != "feast apply"]
    total = sum(f[2] for f in pipeline)
    print(
        f"{'end to end (without feast apply)':52s} {n:13,d} {total:9.1f} {n / total:11,.0f} {peak_rss_gib():9.2f}"
    )
    for worker, peak in sorted(workers.items()):
        print(f"peak memory of Dask worker {worker}: {peak:.2f} GiB")
    print(f"load: {os.getloadavg()}")


if __name__ == "__main__":
    main()
