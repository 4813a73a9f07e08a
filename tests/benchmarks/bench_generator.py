"""Benchmark: generating and writing raw card transactions (target: 1M rows well under 30 s)."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

# Runs standalone (`.venv/bin/python tests/benchmarks/bench_generator.py`): make the repository importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--transactions", type=int, default=1_000_000)
    parser.add_argument("--customers", type=int, default=50_000)
    parser.add_argument("--merchants", type=int, default=5_000)
    parser.add_argument("--repeat", type=int, default=2, help="timed runs; the best is reported")
    args = parser.parse_args()

    import pandas as pd

    from flows.fraud_data.generator import DriftSpec, GeneratorConfig, generate_raw_data, write_raw_data

    n = args.transactions
    base = GeneratorConfig(n_transactions=n, n_customers=args.customers, n_merchants=args.merchants)
    drifted = GeneratorConfig(
        n_transactions=n,
        n_customers=args.customers,
        n_merchants=args.merchants,
        drift=DriftSpec(
            base.start + pd.Timedelta(days=60),
            amount_inflation=1.3,
            channel_shift=0.3,
            new_fraud_pattern=True,
        ),
    )
    print(f"{n:,} transactions, {args.customers:,} customers, {args.merchants:,} merchants")
    for name, config in (("generate", base), ("generate with drift", drifted)):
        best = float("inf")
        for _ in range(args.repeat):
            started = time.perf_counter()
            data = generate_raw_data(config)
            best = min(best, time.perf_counter() - started)
        tx = data.transactions
        print(
            f"{name:<22} {best:6.2f} s  {len(tx) / best:>12,.0f} rows/s  "
            f"fraud rate {tx['is_fraud'].mean():.4f}  oracle mean {tx['oracle_probability'].mean():.4f}"
        )
    with tempfile.TemporaryDirectory(prefix="bench_generator_") as tmp:
        started = time.perf_counter()
        paths = write_raw_data(data, Path(tmp), "batch_001")
        elapsed = time.perf_counter() - started
        size_mb = sum(p.stat().st_size for p in paths) / 1e6
        print(
            f"{'write parquet':<22} {elapsed:6.2f} s  {len(data.transactions) / elapsed:>12,.0f} rows/s  {size_mb:.1f} MB"
        )


if __name__ == "__main__":
    main()
