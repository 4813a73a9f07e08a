"""Model rollout under load: alias moves at 32 connections, shadow scoring's cost, reason codes' latency.

Run: `.venv/bin/python tests/benchmarks/bench_rollout.py [--duration 60] [--moves 5]` (make bench runs it).
A temporary home with its own Feast project on a private redis-server (bench_service's synthetic features), an
MLflow registry on SQLite holding two 300-tree CatBoost versions, and the real service (`bentoml serve`,
following the registry every `RTML_MODEL_POLL_SECONDS`, 5 s by default). Three measurements:

1. wrk at 32 connections for `--duration` seconds, as back-to-back 5-second runs, while the champion alias
   moves `--moves` times (promote v2, roll back to v1, ...), one move at the start of every other run: non-2xx
   answers and socket errors over the whole run; p99 of the runs with a move against the median p99 of the
   steady runs. Probe requests (20 per second, from `deploy/local/rollout_drill.py`) time each move to the
   first decision by the new version.
2. `/score` at one connection with the challenger shadowing every decision (the shadow scorer,
   `python -m services.stream.shadow`, runs beside the service throughout) and without a challenger,
   alternated `--rounds` times (3; 20-second runs: two 10-second runs in the same state differed by 14 % in
   p99, more than the 10 % the target allows).
3. `/score?explain=3` at one connection, alternated with plain `/score` `--rounds` times, after a 3-second
   warm-up in which the reason-code table learns the leaves of the explained transactions (new ones: the table was filled
   from the decisions recorded before the last move, as it is in production from the latest traffic).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from deploy.local.rollout_drill import Move, Probes  # noqa: E402
from deploy.local.servers import free_port, stream_process  # noqa: E402
from tests.benchmarks.bench_service import (  # noqa: E402
    BENTOML_SERVE,
    prepare_home,
    run_wrk,
    start_redis,
    start_server,
    stop_server,
    transaction_rows,
    transactions,
    wait_ready,
    write_lua,
)

SEGMENT_SECONDS = 5
TARGETS = {
    "moves": "0 non-2xx, p99 with a move <= 2x steady p99",
    "swap": "alias move to first decision <= the documented bound",
    "shadow": "shadow on: c1 p50 and p99 within 10 % of shadow off",
    "explain": "c1 p50 <= 1.5 ms with ?explain=3",
}


def register_versions(env: dict[str, str]) -> tuple[str, str]:
    """v1 (champion, also baked into the BentoML store) and v2 (challenger), both 300 trees of depth 6."""
    import numpy as np

    from model_store import registry
    from model_store.settings import clear_settings, get_settings
    from services.scorer.model import save_bento_model
    from tests.services.champion import log_champion

    os.environ.update(env)
    clear_settings()
    settings = get_settings()
    rng = np.random.default_rng(7)
    size = {"experiment": "bench", "iterations": 300, "depth": 6}
    v1 = log_champion(settings, transaction_rows(3000, rng, int(time.time())), seed=0, **size)
    save_bento_model(registry.load_champion(settings), settings)
    v2 = log_champion(settings, transaction_rows(3000, rng, int(time.time())), seed=1, promote=False, **size)
    return v1, v2


def shadowing(redis_url: str, stream: str, seconds: float = 2.0) -> bool:
    """Whether shadow scores are arriving (the probes keep traffic flowing)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        before = client.xlen(stream)
        time.sleep(seconds)
        return client.xlen(stream) > before
    finally:
        client.close()


def wait_for(condition: Any, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError("the service did not follow the registry in time")


SETTLE_SECONDS = 10


def c1(url: str, script: Path, seconds: int) -> dict[str, Any]:
    return run_wrk(url, script, 1, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=60, help="seconds of wrk at 32 connections")
    parser.add_argument("--moves", type=int, default=5, help="alias moves during it")
    parser.add_argument("--c1-seconds", type=int, default=20, help="seconds per one-connection run")
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternations of each one-connection comparison"
    )
    args = parser.parse_args()
    from model_store import libraries

    libraries.typeguard.apply_patches()
    from model_store import registry
    from model_store.settings import get_settings
    from services.scorer.rollout import swap_bound_seconds
    from services.scorer.settings import get_service_settings

    home = Path(tempfile.mkdtemp(prefix="bench_rollout_"))
    print(f"load average at start: {os.getloadavg()}", flush=True)
    redis_process, redis_url = start_redis(home)
    process = None
    try:
        env = prepare_home(home, f"bench_{uuid.uuid4().hex[:8]}", redis_url)
        v1, v2 = register_versions(env)
        settings = get_settings()
        bound = swap_bound_seconds(get_service_settings())
        scripts = {
            "score": write_lua(home / "score.lua", "/score", [json.dumps(t) for t in transactions(2000, 1)]),
            "explain": write_lua(
                home / "explain.lua", "/score?explain=3", [json.dumps(t) for t in transactions(2000, 2)]
            ),
        }
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = home / "service.log"
        process = start_server(
            BENTOML_SERVE,
            "services.scorer.service:OnlineScorer",
            {**os.environ, **env, "PYTHONPATH": str(ROOT), "BENTOML_DO_NOT_TRACK": "true"},
            port,
            log,
        )
        wait_ready(url, process, log)
        run_wrk(url, scripts["score"], 4, 3)  # warm-up

        with stream_process("shadow", env, home / "shadow.log"), Probes(url) as probes:
            # 1. Alias moves under 32 connections, no challenger loaded: the first move loads v2 (and fills its
            # reason-code table from the decisions recorded so far); the later ones take back the version the
            # worker kept loaded when it swapped it out.
            registry.mlflow_client(settings).delete_registered_model_alias(
                settings.model_name, registry.CHALLENGER
            )
            segments = max(args.duration // SEGMENT_SECONDS, 2 * args.moves)
            runs: list[tuple[bool, dict[str, Any]]] = []
            moves: list[Move] = []
            champion, other = v1, v2
            for i in range(segments):
                moving = i % 2 == 1 and len(moves) < args.moves
                result: dict[str, Any] = {}
                load = threading.Thread(
                    target=lambda r=result: r.update(run_wrk(url, scripts["score"], 32, SEGMENT_SECONDS))
                )
                load.start()
                if moving:
                    time.sleep(0.5)
                    moved_at = time.time()
                    if len(moves) % 2 == 0:
                        registry.promote(other, "rollout benchmark", settings)
                    else:
                        registry.rollback(to_version=other, settings=settings)
                    load.join()
                    moves.append(probes.watch(champion, other, moved_at, "benchmark move", timeout=bound * 3))
                    champion, other = other, champion
                else:
                    load.join()
                runs.append((moving, result))

            # 2. Shadow on (the other version challenging) and off (no challenger), alternated.
            shadow: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
            stream = settings.stream("shadow")
            for _ in range(args.rounds):
                registry.challenge(other, settings)
                wait_for(lambda: shadowing(redis_url, stream))
                # The service loads the challenger and fills its reason-code table once, in a thread (1-3 s
                # here): a cost of the alias move, not of shadowing, so the measurement starts after it.
                time.sleep(SETTLE_SECONDS)
                shadow["on"].append(c1(url, scripts["score"], args.c1_seconds))
                registry.mlflow_client(settings).delete_registered_model_alias(
                    settings.model_name, registry.CHALLENGER
                )
                wait_for(lambda: not shadowing(redis_url, stream))
                shadow["off"].append(c1(url, scripts["score"], args.c1_seconds))

            # 3. Reason codes.
            run_wrk(url, scripts["explain"], 1, 3)
            explained: list[dict[str, Any]] = []
            plain: list[dict[str, Any]] = []
            for _ in range(args.rounds):
                explained.append(c1(url, scripts["explain"], args.c1_seconds))
                plain.append(c1(url, scripts["score"], args.c1_seconds))
    finally:
        if process is not None:
            stop_server(process)
        redis_process.terminate()
        redis_process.wait(10)
        shutil.rmtree(home, ignore_errors=True)

    errors = sum(r["non_2xx"] + r["socket_errors"] for _, r in runs)
    steady = statistics.median(r["p99_us"] for moving, r in runs if not moving) / 1000
    with_move = max(r["p99_us"] for moving, r in runs if moving) / 1000
    requests = sum(r["requests"] for _, r in runs)
    rps = requests / sum(r["duration_us"] / 1e6 for _, r in runs)
    print(f"\nalias moves at 32 connections ({len(runs)} runs of {SEGMENT_SECONDS} s, {len(moves)} moves):")
    print(
        f"  {requests:,} requests, {rps:,.0f} req/s, {errors} non-2xx or socket errors; p99 steady {steady:.2f} ms,"
        f" worst run with a move {with_move:.2f} ms (x{with_move / steady:.2f})   target: {TARGETS['moves']}"
    )
    for move in moves:
        took = f"{move.seconds:.2f} s" if move.seconds is not None else "not seen"
        print(
            f"  v{move.from_version} -> v{move.to_version}: first decision {took} after the move, {move.errors} probe errors"
        )
    worst = max((m.seconds for m in moves if m.seconds is not None), default=float("nan"))
    print(f"  worst move {worst:.2f} s, bound {bound:.0f} s   target: {TARGETS['swap']}")
    for state, figures in shadow.items():
        p50 = statistics.median(f["p50_us"] for f in figures) / 1000
        p99 = statistics.median(f["p99_us"] for f in figures) / 1000
        print(
            f"shadow {state:<3}: /score c1 p50 {p50:.2f} ms, p99 {p99:.2f} ms (median of {len(figures)} runs)"
        )
    on = {k: statistics.median(f[k] for f in shadow["on"]) for k in ("p50_us", "p99_us")}
    off = {k: statistics.median(f[k] for f in shadow["off"]) for k in ("p50_us", "p99_us")}
    print(
        f"  shadow's cost: p50 {100 * (on['p50_us'] / off['p50_us'] - 1):+.1f} %, p99"
        f" {100 * (on['p99_us'] / off['p99_us'] - 1):+.1f} %   target: {TARGETS['shadow']}"
    )
    explain = {k: statistics.median(f[k] for f in explained) / 1000 for k in ("p50_us", "p99_us")}
    beside = {k: statistics.median(f[k] for f in plain) / 1000 for k in ("p50_us", "p99_us")}
    print(
        f"/score?explain=3 c1: p50 {explain['p50_us']:.2f} ms, p99 {explain['p99_us']:.2f} ms (median of "
        f"{len(explained)} runs; plain /score between them: p50 {beside['p50_us']:.2f} ms, p99 "
        f"{beside['p99_us']:.2f} ms), errors {sum(f['non_2xx'] + f['socket_errors'] for f in explained)}"
        f"   target: {TARGETS['explain']}"
    )
    print(f"probes: {probes.sent:,} sent, {probes.failed} failed")
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
