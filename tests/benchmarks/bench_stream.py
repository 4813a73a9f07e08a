"""The window processor: throughput, recovery from kill -9, and freshness with the scoring service under load.

Run: `.venv/bin/python tests/benchmarks/bench_stream.py [--events 200000] [--kills 5] [--rate 2000]
[--seconds 60]` (make bench runs it). Everything runs on a redis-server of the benchmark's own, with a Feast
registry applied in a temporary home:

1. Throughput: a generated history of ``--events`` transactions is published, then one processor process
   (``python -m services.stream.processor``) consumes the backlog; events per second from its first to its
   last acknowledgement, its peak resident memory, and its resident memory at each quarter of the backlog:
   the history spans 30 days and the widest window 7, so memory that grows with the history after the first
   quarter is memory the windows do not need.
2. Recovery: the same history again on empty state; the processor is killed with SIGKILL ``--kills`` times
   while it works and restarted; at the end every customer's and merchant's online values are compared with
   the batch computation (``compute_windows``): mismatches mean an event was lost or counted twice.
3. Freshness: the scoring service (``bentoml serve``, synthetic features and model, as bench_service builds
   them) under wrk load at 8 connections, while ``--rate`` transactions per second are published for
   ``--seconds``; for every tenth, the time from its publication to its customer's online value carrying it.

Targets (issue: real-time features): >= 20,000 events/s from one process; p99 publish-to-visible <= 250 ms at
2,000 transactions/s with the service under load; 0 lost and 0 counted twice after five kills.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
TARGETS = {
    "throughput": ">= 20,000 events/s from one consumer process",
    "freshness": "p99 <= 250 ms publish to visible, 2,000 tx/s, service under load",
    "recovery": "0 lost, 0 counted twice after 5 kills during the replay",
}


def start_processor(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "services.stream.processor"],
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def acknowledged(client: Any, stream: str, group: str) -> int:
    try:
        for info in client.xinfo_groups(stream):
            if info["name"].decode() == group:
                return (info["entries-read"] or 0) - info["pending"]
    except Exception:  # the stream or group does not exist yet
        return 0
    return 0


def rss_mb(pid: int) -> float:
    import psutil

    try:
        return psutil.Process(pid).memory_info().rss / 2**20
    except psutil.Error:
        return 0.0


def history(n: int) -> Any:
    import pandas as pd

    from flows.fraud_data.generator import GeneratorConfig, generate_raw_data

    start = pd.Timestamp.now(tz="UTC").floor("D") - pd.Timedelta(days=31)
    data = generate_raw_data(
        GeneratorConfig(
            n_transactions=n,
            n_customers=max(100, n // 20),
            n_merchants=max(10, n // 200),
            start=start,
            days=30,
        )
    )
    return data.transactions.sort_values("event_timestamp", kind="stable").reset_index(drop=True)


def publish_frame(url: str, stream: str, frame: Any) -> float:
    import redis

    from services.stream.events import transactions_of
    from services.stream.publish import publish

    events = list(transactions_of(frame))
    client = redis.Redis.from_url(url)
    started = time.perf_counter()
    publish(client, stream, events, "upstream", 10_000_000)
    client.close()
    return time.perf_counter() - started


def throughput(env: dict[str, str], settings: Any, frame: Any, home: Path) -> dict[str, float]:
    import redis

    stream = settings.stream("transactions")
    publish_seconds = publish_frame(settings.redis_url, stream, frame)
    client = redis.Redis.from_url(settings.redis_url)
    redis_cpu = redis_cpu_seconds(client)
    # The benchmark's own Redis: its statistics and slow log are ours to reset.
    client.config_resetstat()
    client.config_set("slowlog-log-slower-than", 10_000)
    client.config_set("slowlog-max-len", 100_000)
    client.slowlog_reset()
    process = start_processor(env, home / "throughput.log")
    first = last = None
    peak = 0.0
    quarters: list[float] = []
    try:
        while True:
            done = acknowledged(client, stream, "windows-0-of-1")
            now = time.perf_counter()
            rss = rss_mb(process.pid)
            peak = max(peak, rss)
            while len(quarters) < 4 and done >= len(frame) * (len(quarters) + 1) / 4:
                quarters.append(rss)
            if done and first is None:
                first = (now, done)
            if done >= len(frame):
                last = now
                break
            if process.poll() is not None:
                raise RuntimeError((home / "throughput.log").read_text()[-3000:])
            time.sleep(0.02)
        redis_cpu = redis_cpu_seconds(client) - redis_cpu
        writes = client.info("commandstats").get("cmdstat_evalsha", {})
        slow_writes = sum(1 for e in client.slowlog_get(100_000) if b"EVALSHA" in e["command"].upper())
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
        client.close()
    assert first is not None and last is not None
    rate = (len(frame) - first[1]) / max(last - first[0], 1e-9)
    return {
        "events": len(frame),
        "events_per_s": rate,
        "publish_per_s": len(frame) / publish_seconds,
        "rss_mb": peak,
        "rss_quarters_mb": quarters,
        "redis_us_per_event": redis_cpu / len(frame) * 1e6,
        "writes": int(writes.get("calls", 0)),
        "write_ms": float(writes.get("usec_per_call", 0.0)) / 1000,
        "slow_writes": slow_writes,
    }


def redis_cpu_seconds(client: Any) -> float:
    """CPU time the Redis server has used (user and system): what the processor's commits cost it."""
    cpu = client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def compare_with_batch(settings: Any, frame: Any) -> dict[str, int]:
    """Entities whose online values differ from the batch computation's newest row, per view."""
    from services.stream.windows import compute_windows
    from tests.fixtures.feature_repo import declared_windowed_views

    store = settings.feature_store()
    mismatched = {}
    for view in declared_windowed_views().values():
        expected = compute_windows(view, frame).groupby(view.key).tail(1).set_index(view.key)
        names = [f.name for f in view.features]
        bad = 0
        keys = list(expected.index)
        for start in range(0, len(keys), 2000):
            chunk = keys[start : start + 2000]
            online = (
                store.get_online_features(
                    features=[f"{view.name}:{n}" for n in names],
                    entity_rows=[{view.key: int(k)} for k in chunk],
                )
                .to_df()
                .set_index(view.key)
            )
            differ = (online[names].to_numpy() != expected.loc[chunk, names].to_numpy()).any(axis=1)
            bad += int(differ.sum())
        mismatched[view.name] = bad
    return mismatched


def recovery(env: dict[str, str], settings: Any, frame: Any, home: Path, kills: int) -> dict[str, Any]:
    import redis

    stream = settings.stream("transactions")
    publish_frame(settings.redis_url, stream, frame)
    client = redis.Redis.from_url(settings.redis_url)
    # A short lease, so that a restarted process takes the partition over soon; on a busy machine a batch can
    # outlast it, and a processor that lost its lease exits to be restarted: restarted here as Kubernetes would.
    env = {**env, "RTML_STREAM_LEASE_SECONDS": "5"}
    log = home / "recovery.log"
    started = time.perf_counter()
    at = []
    exits = 0

    def restarted_if_it_exited(process: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        nonlocal exits
        if process.poll() is None:
            return process
        if process.returncode != 1 or "exiting so that this process is restarted" not in log.read_text():
            raise RuntimeError(log.read_text()[-3000:])
        exits += 1
        return start_processor(env, log)

    for kill in range(kills):
        process = start_processor(env, log)
        target = (kill + 1) * len(frame) // (kills + 1)
        while acknowledged(client, stream, "windows-0-of-1") < target:
            process = restarted_if_it_exited(process)
            time.sleep(0.01)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        at.append(acknowledged(client, stream, "windows-0-of-1"))
    process = start_processor(env, log)
    while acknowledged(client, stream, "windows-0-of-1") < len(frame):
        process = restarted_if_it_exited(process)
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(30)
    client.close()
    return {
        "killed_at": at,
        "seconds": seconds,
        "lease_exits": exits,
        "mismatched": compare_with_batch(settings, frame),
    }


def freshness(env: dict[str, str], home: Path, rate: int, seconds: int) -> dict[str, float]:
    """Publish ``rate`` transactions/s for ``seconds`` beside wrk on the service; sample publish-to-visible."""
    import json

    import numpy as np
    import redis

    from model_store import libraries
    from model_store.settings import clear_settings
    from services.stream.settings import get_stream_settings
    from tests.benchmarks import bench_service as svc

    project = f"bench_fresh_{uuid.uuid4().hex[:6]}"
    fresh_home = home / "fresh"
    service_env = {
        **env,
        **svc.prepare_home(fresh_home, project, env["RTML_REDIS_URL"]),
        "PYTHONPATH": str(ROOT),
    }
    clear_settings()
    settings = get_stream_settings()
    processor = start_processor(service_env, home / "fresh-processor.log")
    port = svc.free_port()
    url = f"http://127.0.0.1:{port}"
    service = svc.start_server(
        svc.BENTOML_SERVE,
        "services.scorer.service:OnlineScorer",
        service_env,
        port,
        home / "fresh-service.log",
    )
    script = svc.write_lua(
        home / "fresh.lua", "/score", [json.dumps(t) for t in svc.transactions(2000, seed=3)]
    )
    client = redis.Redis.from_url(settings.redis_url)
    stream = settings.stream("transactions")
    from feast.value_type import ValueType

    encode_key = libraries.feast.key_encoder(project, ["customer_id"], [ValueType.INT64], 3)
    ts_field = libraries.feast.timestamp_field("customer_activity")
    samples: list[tuple[bytes, int, float]] = []
    latencies: list[float] = []
    lock = threading.Lock()
    stop = threading.Event()

    def probe() -> None:
        watcher = redis.Redis.from_url(settings.redis_url)
        waiting: list[tuple[bytes, int, float]] = []
        while not stop.is_set() or waiting:
            with lock:
                waiting.extend(samples)
                samples.clear()
            if waiting:
                raw = watcher.pipeline(transaction=False)
                for key, _, _ in waiting:
                    raw.hget(key, ts_field)
                now = time.perf_counter()
                still = []
                for (key, stamp, published), value in zip(waiting, raw.execute(), strict=True):
                    if value is not None and libraries.feast.timestamp_micros([value])[0] >= stamp:
                        latencies.append(now - published)
                    elif now - published < 10:
                        still.append((key, stamp, published))
                waiting = still
            time.sleep(0.002)
        watcher.close()

    try:
        svc.wait_ready(url, service, home / "fresh-service.log")
        load = subprocess.Popen(
            ["wrk", "-t2", "-c8", f"-d{seconds + 5}s", "-s", str(script), url], stdout=subprocess.DEVNULL
        )
        time.sleep(2)
        watcher = threading.Thread(target=probe, daemon=True)
        watcher.start()
        rng = np.random.default_rng(1)
        tick = 0.01
        start = time.perf_counter()
        sent = 0
        from services.stream.events import encode
        from services.stream.publish import xadd

        while (elapsed := time.perf_counter() - start) < seconds:
            due = int(elapsed * rate) - sent
            if due > 0:
                pipe = client.pipeline(transaction=False)
                batch = []
                micros = time.time_ns() // 1000
                moment = EPOCH + timedelta(microseconds=micros)
                for i in range(due):
                    customer = (
                        3_000_000 + sent + i
                    )  # a customer of its own: its value changes only by this one
                    body = json.dumps(
                        {
                            "transaction_id": f"fresh-{sent + i}",
                            "customer_id": customer,
                            "merchant_id": int(rng.integers(1, 2000)),
                            "amount": 12.5,
                            "timestamp": moment.isoformat(),
                            "channel": "online",
                        }
                    ).encode()
                    pipe.execute_command(*xadd(stream, encode(body, "upstream"), 10_000_000))
                    if (sent + i) % 10 == 0:
                        batch.append((encode_key((customer,)), micros + 1000))
                pipe.execute()
                published = time.perf_counter()
                with lock:
                    samples.extend((key, stamp, published) for key, stamp in batch)
                sent += due
            time.sleep(tick / 2)
        stop.set()
        watcher.join(30)
        load.wait(60)
    finally:
        for process in (service, processor):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(60)
        client.close()
    values = np.array(latencies) * 1000
    return {
        "published": sent,
        "rate": sent / seconds,
        "samples": len(values),
        "p50_ms": float(np.percentile(values, 50)),
        "p99_ms": float(np.percentile(values, 99)),
        "p999_ms": float(np.percentile(values, 99.9)),
        "max_ms": float(values.max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--rate", type=int, default=2_000)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument(
        "--phases",
        default="throughput,recovery,freshness",
        help="comma-separated phases to run (make chaos runs recovery alone: docs/reliability.md, scenario 3)",
    )
    args = parser.parse_args()
    phases = set(args.phases.split(","))

    from model_store import libraries

    libraries.typeguard.apply_patches()
    import redis

    from flows.feature_store.definitions import apply_definitions
    from model_store.settings import clear_settings
    from services.stream.settings import get_stream_settings
    from tests.benchmarks.bench_service import start_redis

    home = Path(tempfile.mkdtemp(prefix="bench_stream_"))
    redis_process, url = start_redis(home)
    env = {
        **os.environ,
        "RTML_HOME": str(home / "rtml"),
        "RTML_FEAST_PROJECT": f"bench_stream_{uuid.uuid4().hex[:6]}",
        "RTML_REDIS_URL": url,
        "RTML_STREAM_HEALTH_PORT": "0",
        "PYTHONPATH": str(ROOT),
    }
    os.environ.update(env)
    clear_settings()
    settings = get_stream_settings()
    try:
        print(f"load average at start: {os.getloadavg()}", flush=True)
        apply_definitions(settings)
        frame = history(args.events)
        print(
            f"history: {len(frame):,} transactions, {frame['customer_id'].nunique():,} customers, "
            f"{frame['merchant_id'].nunique():,} merchants",
            flush=True,
        )
        if "throughput" in phases:
            rate = throughput(env, settings, frame, home)
            print(
                f"throughput: {rate['events_per_s']:,.0f} events/s from one process ({rate['events']:,} events), "
                f"peak RSS {rate['rss_mb']:.0f} MB; published at {rate['publish_per_s']:,.0f}/s; Redis's CPU "
                f"{rate['redis_us_per_event']:.1f} us per event (batches of {settings.processor_batch_size:,})",
                flush=True,
            )
            print(
                f"  writes: {rate['writes']:,} Lua calls holding Redis {rate['write_ms']:.1f} ms each on average, "
                f"{rate['slow_writes']} of them over 10 ms (while one runs, Redis answers nobody else)",
                flush=True,
            )
            print(
                "  RSS after each quarter of the history (days 7.5, 15, 22.5, 30; windows reach 7 days back): "
                + ", ".join(f"{mb:.0f} MB" for mb in rate["rss_quarters_mb"]),
                flush=True,
            )
            client = redis.Redis.from_url(url)
            client.flushdb()  # the benchmark's own redis-server: nothing else lives there
            client.close()
        if "recovery" in phases:
            outcome = recovery(env, settings, frame, home, args.kills)
            print(
                f"recovery: killed with SIGKILL at {outcome['killed_at']} acknowledged events, whole replay "
                f"{outcome['seconds']:.1f}s (processes that lost their lease and were restarted: "
                f"{outcome['lease_exits']}); entities differing from the batch: {outcome['mismatched']}",
                flush=True,
            )
        if "freshness" in phases:
            fresh = freshness(env, home, args.rate, args.seconds)
            print(
                f"freshness at {fresh['rate']:,.0f} tx/s with wrk on the service ({fresh['samples']:,} samples): "
                f"p50 {fresh['p50_ms']:.1f} ms, p99 {fresh['p99_ms']:.1f} ms, p99.9 {fresh['p999_ms']:.1f} ms, "
                f"max {fresh['max_ms']:.1f} ms",
                flush=True,
            )
        print("\ntargets:")
        for name, target in TARGETS.items():
            print(f"  {name:<11} {target}")
        print(f"load average at end: {os.getloadavg()}")
    finally:
        redis_process.terminate()
        redis_process.wait(10)
        import shutil

        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
