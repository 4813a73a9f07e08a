"""Scoring service under load: /score at 1 and 32 connections and /score_batch of 1,000, beside the plain path.

Run: `.venv/bin/python tests/benchmarks/bench_service.py [--duration 10] [--workers 1] [--py-spy PATH]`
(make bench runs it). Builds a temporary home with its own Feast project on the configured Redis (synthetic
features for 20,000 customers and 2,000 merchants, written through Feast), trains a 300-tree CatBoost on the
feature service's features, and serves in turn: the real service, which publishes every decision to the
transactions stream before answering; the same with publishing off (what the decision record costs); the plain path (a `@bentoml.api` endpoint calling Feast's `get_online_features` and CatBoost's
`predict_proba` on a DataFrame, with `bentoml serve`); BentoML's floor (the service's configuration mounting an
endpoint that answers without work); and the machine's HTTP floor (that endpoint on uvicorn alone). wrk loads each on loopback, cycling through 2,000 different transactions
(2 % unknown customers). With `--py-spy`, py-spy profiles of the service worker show where the time goes.
Deletes its Redis keys at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import bentoml  # noqa: E402  (after the path fix: this module is also served as the plain path)

from deploy.local.servers import free_port  # noqa: E402
from services.scorer.service import SERVICE_CONFIG  # noqa: E402
from services.scorer.transaction import Transaction  # noqa: E402

N_CUSTOMERS, N_MERCHANTS = 20_000, 2_000
# Seconds the service is left alone after it is ready: start-up work off the request path (the reason codes'
# tables, the first registry poll, which sets up MLflow's SQLite store in a second of CPU) ends before the
# steady state is measured.
SETTLE_SECONDS = 10
TARGETS = {
    "score_c1": "p50 <= 0.8 ms and p99 <= 2.5 ms, publishing on",
    "score_c32": ">= 4,000 req/s, p99 <= 15 ms, no errors, publishing on",
    "batch_1000": "< 50 ms per batch",
}


@bentoml.service(name="plain_scorer", workers=1, traffic={"timeout": 60})
class PlainScorer:
    """The plain path to beat: BentoML's @bentoml.api, Feast's SDK, CatBoost on a DataFrame."""

    def __init__(self) -> None:
        from model_store import libraries
        from model_store.settings import get_settings
        from services.scorer.model import load_serving_model

        libraries.typeguard.apply_patches()  # as the service does
        settings = get_settings()
        self.store = settings.feature_store()
        self.served = load_serving_model(settings)
        self.service = self.store.get_feature_service(self.served.contract.feature_service)

    def _score(self, transactions: list[Transaction]) -> list[dict[str, Any]]:
        from model_store.scorer import prepare_features
        from services.scorer.transaction import feature_rows

        frame = self.store.get_online_features(
            features=self.service, entity_rows=feature_rows(transactions)
        ).to_df()
        contract = self.served.contract
        scores = self.served.model.predict_proba(
            prepare_features(frame, contract.features, contract.categorical_features)
        )[:, 1]
        return [
            {"transaction_id": t.transaction_id, "fraud_probability": float(s), "decision": d}
            for t, s, d in zip(transactions, scores, self.served.decide(scores), strict=True)
        ]

    @bentoml.api
    def score(self, transaction: Transaction) -> dict[str, Any]:
        return self._score([transaction])[0]

    @bentoml.api
    def score_batch(self, transactions: list[Transaction]) -> list[dict[str, Any]]:
        return self._score(transactions)


async def _floor_answer(request: Any) -> Any:
    from starlette.responses import Response

    await request.body()
    return Response(b'{"fraud_probability": 0.0}', media_type="application/json")


def floor_app() -> Any:
    """The machine's HTTP floor: Starlette on uvicorn reading the body and answering, with no work at all."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    return Starlette(
        routes=[
            Route("/score", _floor_answer, methods=["POST"]),
            Route("/score_batch", _floor_answer, methods=["POST"]),
            Route("/readyz", _floor_answer, methods=["GET"]),
        ]
    )


@bentoml.service(name="bentoml_floor", **SERVICE_CONFIG)
@bentoml.asgi_app(floor_app(), path="/")
class BentoFloor:
    """BentoML's own per-request cost: the scoring service's configuration and start-up tuning, mounting the
    floor app (no features, no model, no decision record)."""

    def __init__(self) -> None:
        from services.scorer.service import tune_interpreter

        tune_interpreter()


def synthetic_value_columns(view: Any, n: int, rng: Any, now: int) -> dict[str, Any]:
    """Plausible random values for a feature view's fields, by type (epoch columns look like epochs)."""
    from feast.types import Float64, Int64, String

    columns: dict[str, Any] = {}
    for field in view.features:
        if field.dtype == String:
            columns[field.name] = rng.choice(["north", "south", "east", "west", "abroad"], n)
        elif field.dtype == Int64 and field.name.endswith("_unix"):
            columns[field.name] = now - rng.integers(60, 86_400 * 400, n)
        elif field.dtype == Int64:
            columns[field.name] = rng.integers(0, 40, n)
        elif field.dtype == Float64:
            columns[field.name] = rng.gamma(2.0, 60.0, n)
        else:
            raise TypeError(f"no synthetic values for {view.name}.{field.name} of type {field.dtype}")
    return columns


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A redis-server of the benchmark's own: the shared one serves other work whose pipelines add tails."""
    import redis

    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    for _ in range(200):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    client.close()
    return process, f"redis://127.0.0.1:{port}/0"


def prepare_home(home: Path, project: str, redis_url: str) -> dict[str, str]:
    """Settings environment of a temporary home: Feast applied, features written, a model in the BentoML store."""
    import numpy as np
    import pandas as pd
    from catboost import CatBoostClassifier

    from model_store.scorer import ModelContract, Scorer, prepare_features
    from model_store.settings import clear_settings, get_settings
    from services.scorer.model import save_bento_model

    env = {
        "RTML_HOME": str(home),
        "RTML_FEAST_PROJECT": project,
        "BENTOML_HOME": str(home / "bentoml"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
        "RTML_REDIS_URL": redis_url,
    }
    os.environ.update(env)
    clear_settings()
    settings = get_settings()
    settings.export_feast_env()
    feast = Path(sys.executable).with_name("feast")
    subprocess.run(
        [str(feast), "-c", str(settings.feast_repo_path), "-f", str(settings.feast_yaml), "apply"],
        check=True,
        capture_output=True,
    )
    store = settings.feature_store()
    rng = np.random.default_rng(0)
    now = int(time.time())
    for view in store.list_feature_views():
        key = view.entity_columns[0].name
        n = N_CUSTOMERS if key == "customer_id" else N_MERCHANTS
        frame = pd.DataFrame(
            {key: np.arange(1, n + 1, dtype="int64"), **synthetic_value_columns(view, n, rng, now)}
        )
        frame["event_timestamp"] = pd.Timestamp.now(tz="UTC") - pd.Timedelta(minutes=5)
        store.write_to_online_store(view.name, frame)

    service = store.get_feature_service(settings.feature_service)
    rows = transaction_rows(3000, rng, now)
    features = store.get_online_features(features=service, entity_rows=rows).to_df()
    names = [c for c in features.columns if c not in ("customer_id", "merchant_id")]
    categorical = [c for c in names if features[c].dtype == object]
    inputs = prepare_features(features, names, categorical)
    numeric = inputs[[c for c in names if c not in categorical]].fillna(0).to_numpy()
    weights = rng.normal(size=numeric.shape[1])
    z = (numeric - numeric.mean(0)) / (numeric.std(0) + 1e-9) @ weights / np.sqrt(len(weights))
    labels = (rng.random(len(z)) < 1 / (1 + np.exp(-(2 * z - 2)))).astype(int)
    model = CatBoostClassifier(
        iterations=300, depth=6, verbose=False, cat_features=categorical, thread_count=2
    )
    model.fit(inputs, labels)
    contract = ModelContract(
        decision_threshold=0.5,
        target_fpr=0.05,
        feature_service=settings.feature_service,
        features=names,
        categorical_features=categorical,
    )
    save_bento_model(Scorer(model=model, name=settings.model_name, version="1", contract=contract), settings)
    return env


def transaction_rows(n: int, rng: Any, now: int) -> dict[str, list[Any]]:
    return {
        "customer_id": [int(c) for c in rng.integers(1, N_CUSTOMERS + 1, n)],
        "merchant_id": [int(m) for m in rng.integers(1, N_MERCHANTS + 1, n)],
        "amount": [round(float(a), 2) for a in rng.gamma(2.0, 60.0, n)],
        "channel": [str(c) for c in rng.choice(["chip", "contactless", "online"], n)],
        "transaction_unix": [now - int(s) for s in rng.integers(0, 3600, n)],
    }


def transactions(n: int, seed: int) -> list[dict[str, Any]]:
    """Request bodies: known entities, and 2 % customers the store has never seen."""
    import numpy as np

    rng = np.random.default_rng(seed)
    start = datetime.now(UTC) - timedelta(minutes=30)
    out = []
    for i in range(n):
        customer = int(rng.integers(1, N_CUSTOMERS + 1)) if rng.random() > 0.02 else 10_000_000 + i
        out.append(
            {
                "transaction_id": f"bench-{seed}-{i}",
                "customer_id": customer,
                "merchant_id": int(rng.integers(1, N_MERCHANTS + 1)),
                "amount": round(float(rng.gamma(2.0, 60.0)), 2),
                "timestamp": (start + timedelta(seconds=i)).isoformat(),
                "channel": ["chip", "contactless", "online"][i % 3],
            }
        )
    return out


def write_lua(path: Path, route: str, bodies: list[str]) -> Path:
    """A wrk script cycling through POST bodies and printing its figures as one JSON line."""
    quoted = ",\n".join(f"[==[{b}]==]" for b in bodies)
    path.write_text(
        f"""
local bodies = {{
{quoted}
}}
local i = 0
local headers = {{["Content-Type"] = "application/json"}}
request = function()
  i = i % #bodies + 1
  return wrk.format("POST", "{route}", headers, bodies[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_JSON {{\\"p50_us\\": %d, \\"p99_us\\": %d, \\"max_us\\": %d, \\"requests\\": %d, "
    .. "\\"duration_us\\": %d, \\"socket_errors\\": %d, \\"non_2xx\\": %d}}\\n",
    latency:percentile(50), latency:percentile(99), latency.max, summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status))
end
"""
    )
    return path


def run_wrk(url: str, script: Path, connections: int, duration: int) -> dict[str, Any]:
    threads = min(2, connections)
    result = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{duration}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    line = next(x for x in result.stdout.splitlines() if x.startswith("BENCH_JSON "))
    figures = json.loads(line.removeprefix("BENCH_JSON "))
    figures["rps"] = figures["requests"] / (figures["duration_us"] / 1e6)
    return figures


BENTOML_SERVE = [str(Path(sys.executable).with_name("bentoml")), "serve"]
UVICORN_FACTORY = [str(Path(sys.executable).with_name("uvicorn")), "--factory", "--no-access-log"]


def start_server(
    command: list[str], target: str, env: dict[str, str], port: int, log: Path
) -> subprocess.Popen[bytes]:
    with log.open("wb") as sink:
        return subprocess.Popen(
            [*command, target, "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, seconds: float = 180) -> None:
    import urllib.request

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"server not ready after {seconds}s:\n{log.read_text()[-3000:]}")


def stop_server(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def worker_pids(process: subprocess.Popen[bytes]) -> list[int]:
    import psutil

    return [
        child.pid
        for child in psutil.Process(process.pid).children(recursive=True)
        if "_bentoml_impl.worker" in " ".join(child.cmdline())
    ]


# Where a sample's innermost frame lives, first match wins (paths as py-spy prints them).
CATEGORIES = (
    ("CatBoost (Python API and model)", ("catboost/",)),
    ("feature read: our code", ("services/scorer/online_features",)),
    ("feature read: redis-py and hiredis", ("redis/", "hiredis")),
    ("on-demand view UDF", ("<string>",)),
    ("scoring, model inputs (our code)", ("services/scorer/scoring", "services/scorer/model")),
    ("request parsing and validation", ("pydantic", "services/scorer/transaction")),
    ("decision record: encoding and publishing", ("services/stream", "services/packed_commands", "orjson")),
    ("Prometheus metrics", ("prometheus_client",)),
    ("OpenTelemetry middleware", ("opentelemetry",)),
    ("BentoML middleware and context", ("bentoml", "_bentoml")),
    (
        "HTTP: uvicorn, Starlette, asyncio",
        ("uvicorn", "starlette", "httptools", "asyncio", "anyio", "uvloop"),
    ),
)


def profile_worker(py_spy: str, pid: int, seconds: int, out: Path, label: str) -> str:
    """py-spy samples of one worker: time by component (innermost frame) and the busiest functions."""
    subprocess.run(
        [
            py_spy,
            "record",
            "--full-filenames",
            "--pid",
            str(pid),
            "--duration",
            str(seconds),
            "--rate",
            "250",
            "--format",
            "raw",
            "--output",
            str(out),
            "--nonblocking",
        ],
        check=True,
        capture_output=True,
    )
    by_category: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        samples = int(count)
        total += samples
        top = stack.split(";")[-1]
        path = top.split(" (", 1)[1] if " (" in top else top
        category = next((name for name, marks in CATEGORIES if any(m in path for m in marks)), "other")
        by_category[category] += samples
        function = top.split(" (")[0]
        where = path.split(":")[0].rsplit("/", 1)[-1]
        own[f"{function} ({where})"] += samples
    lines = [f"py-spy, {label}: {total} samples of worker {pid} at 250 Hz over {seconds}s (all threads)"]
    lines.append("  where the samples are (innermost frame):")
    lines += [f"    {100 * c / total:5.1f}%  {name}" for name, c in by_category.most_common()]
    lines.append("  busiest functions (own time):")
    lines += [f"    {100 * c / total:5.1f}%  {f}" for f, c in own.most_common(12)]
    return "\n".join(lines)


def profile_case(
    py_spy: str, pid: int, url: str, script: Path, connections: int, seconds: int, out: Path
) -> str:
    """Profile the worker while wrk drives one case."""
    load = subprocess.Popen(
        ["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{seconds + 4}s", "-s", str(script), url],
        stdout=subprocess.DEVNULL,
    )
    try:
        time.sleep(1)
        return profile_worker(py_spy, pid, seconds, out, f"{script.stem} at {connections} connection(s)")
    finally:
        load.wait()


def bench(name: str, url: str, scripts: dict[str, Path], duration: int) -> dict[str, dict[str, Any]]:
    results = {}
    run_wrk(f"{url}", scripts["score"], 4, 3)  # warm-up: caches, allocator, first-call costs
    results["score_c1"] = run_wrk(url, scripts["score"], 1, duration)
    results["score_c32"] = run_wrk(url, scripts["score"], 32, duration)
    run_wrk(url, scripts["batch"], 1, 2)
    results["batch_1000"] = run_wrk(url, scripts["batch"], 1, duration)
    for case, figures in results.items():
        print(
            f"  {name:<7} {case:<11} p50 {figures['p50_us'] / 1000:8.2f} ms   p99 {figures['p99_us'] / 1000:8.2f} ms"
            f"   {figures['rps']:8.1f} req/s   errors {figures['socket_errors'] + figures['non_2xx']}",
            flush=True,
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--workers", type=int, default=None, help="service workers (default: the service's)")
    parser.add_argument(
        "--py-spy", default=None, help="path to a py-spy binary to profile the service worker"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary home")
    parser.add_argument(
        "--shared-redis",
        action="store_true",
        help="use the configured Redis instead of a private redis-server",
    )
    args = parser.parse_args()
    if subprocess.run(["which", "wrk"], capture_output=True).returncode != 0:
        sys.exit("wrk is not installed (apt-get install wrk, or `make bench` installs it)")
    import psutil

    from model_store import libraries

    libraries.typeguard.apply_patches()  # before the setup imports Feast

    from tests.conftest import delete_project_keys

    home = Path(tempfile.mkdtemp(prefix="bench_service_"))
    project = f"bench_{uuid.uuid4().hex[:8]}"
    print(f"load average at start: {os.getloadavg()}", flush=True)
    started = time.perf_counter()
    redis_process = None
    if args.shared_redis:
        from model_store.settings import get_settings

        redis_url = get_settings().redis_url
    else:
        redis_process, redis_url = start_redis(home)
    from model_store.settings import redacted_url

    print(f"online store: {redacted_url(redis_url)}", flush=True)
    env = {
        **os.environ,
        **prepare_home(home, project, redis_url),
        "PYTHONPATH": str(ROOT),
        "BENTOML_DO_NOT_TRACK": "true",
    }
    print(f"setup (feast apply, features, model): {time.perf_counter() - started:.1f}s", flush=True)

    singles = [json.dumps(t) for t in transactions(2000, seed=1)]
    batches = [json.dumps({"transactions": transactions(1000, seed=10 + i)}) for i in range(4)]
    scripts = {
        "service": {
            "score": write_lua(home / "score.lua", "/score", singles),
            "batch": write_lua(home / "batch.lua", "/score_batch", batches),
        },
        "plain": {
            "score": write_lua(
                home / "plain_score.lua", "/score", [f'{{"transaction": {b}}}' for b in singles]
            ),
            # BentoML's API takes its argument by name: {"transactions": [...]} as well.
            "batch": write_lua(home / "plain_batch.lua", "/score_batch", batches),
        },
    }
    scripts["floor"] = scripts["bentoml"] = scripts["unpublished"] = scripts["service"]  # the same requests
    service_env = dict(env)
    if args.workers:
        service_env["BENTOML_CONFIG_OPTIONS"] = f"services.online_scorer.workers={args.workers}"
    results: dict[str, dict[str, dict[str, Any]]] = {}
    profiles: list[str] = []
    try:
        service = "services.scorer.service:OnlineScorer"
        for name, command, target, server_env in (
            ("service", BENTOML_SERVE, service, service_env),
            ("unpublished", BENTOML_SERVE, service, {**service_env, "RTML_PUBLISH_DECISIONS": "false"}),
            ("plain", BENTOML_SERVE, "tests.benchmarks.bench_service:PlainScorer", env),
            ("bentoml", BENTOML_SERVE, "tests.benchmarks.bench_service:BentoFloor", env),
            ("floor", UVICORN_FACTORY, "tests.benchmarks.bench_service:floor_app", env),
        ):
            port = free_port()
            log = home / f"{name}.log"
            process = start_server(command, target, server_env, port, log)
            try:
                url = f"http://127.0.0.1:{port}"
                wait_ready(url, process, log)
                if target == service:
                    time.sleep(SETTLE_SECONDS)
                results[name] = bench(name, url, scripts[name], args.duration)
                if name == "service":
                    memory = [psutil.Process(pid).memory_info().rss / 2**20 for pid in worker_pids(process)]
                    print(
                        f"  service: {len(memory)} worker(s), RSS "
                        + " + ".join(f"{m:.0f}" for m in memory)
                        + " MB",
                        flush=True,
                    )
                if name == "service" and args.py_spy:
                    pid = worker_pids(process)[0]
                    for connections, kind in ((1, "score"), (32, "score"), (1, "batch")):
                        out = home / f"profile_{kind}_{connections}.txt"
                        profiles.append(
                            profile_case(
                                args.py_spy, pid, url, scripts[name][kind], connections, args.duration, out
                            )
                        )
            finally:
                stop_server(process)
    finally:
        if redis_process is not None:
            redis_process.terminate()
            redis_process.wait(10)
        else:
            delete_project_keys(project, redis_url)
        if not args.keep:
            import shutil

            shutil.rmtree(home, ignore_errors=True)

    print("\nservice vs plain path (targets on the 2-core machine):")
    for case, target in TARGETS.items():
        ours, plain = results["service"][case], results["plain"][case]
        print(
            f"  {case:<11} p50 {ours['p50_us'] / 1000:.2f} ms (plain {plain['p50_us'] / 1000:.2f}, "
            f"x{plain['p50_us'] / max(ours['p50_us'], 1):.1f})   p99 {ours['p99_us'] / 1000:.2f} ms "
            f"(plain {plain['p99_us'] / 1000:.2f}, x{plain['p99_us'] / max(ours['p99_us'], 1):.1f})   "
            f"{ours['rps']:.0f} req/s (plain {plain['rps']:.0f}, x{ours['rps'] / max(plain['rps'], 1e-9):.1f})   "
            f"errors {ours['socket_errors'] + ours['non_2xx']}   target: {target}"
        )
    logged, unlogged = results["service"], results["unpublished"]
    print(
        "  the decision record's cost (the service against itself with RTML_PUBLISH_DECISIONS=false): "
        f"c1 p50 {(logged['score_c1']['p50_us'] - unlogged['score_c1']['p50_us']) / 1000:+.2f} ms "
        f"p99 {(logged['score_c1']['p99_us'] - unlogged['score_c1']['p99_us']) / 1000:+.2f} ms; "
        f"c32 {100 * (logged['score_c32']['rps'] / unlogged['score_c32']['rps'] - 1):+.0f} % req/s; "
        f"batch of 1,000 p50 {(logged['batch_1000']['p50_us'] - unlogged['batch_1000']['p50_us']) / 1000:+.1f} ms"
    )
    floor = results["floor"]
    print(
        "  HTTP floor of this machine (Starlette on uvicorn answering without work): "
        f"c1 p50 {floor['score_c1']['p50_us'] / 1000:.2f} ms p99 {floor['score_c1']['p99_us'] / 1000:.2f} ms; "
        f"c32 {floor['score_c32']['rps']:.0f} req/s p99 {floor['score_c32']['p99_us'] / 1000:.2f} ms; "
        f"1,000-transaction body p50 {floor['batch_1000']['p50_us'] / 1000:.2f} ms"
    )
    bento = results["bentoml"]
    print(
        "  BentoML's floor (the service's configuration mounting that app): "
        f"c1 p50 {bento['score_c1']['p50_us'] / 1000:.2f} ms p99 {bento['score_c1']['p99_us'] / 1000:.2f} ms; "
        f"c32 {bento['score_c32']['rps']:.0f} req/s; so of the service's c1 p50, "
        f"{(logged['score_c1']['p50_us'] - bento['score_c1']['p50_us']) / 1000:.2f} ms is its own work "
        "(features, model, decision record)"
    )
    for profile in profiles:
        print("\n" + profile)
    print(f"\nload average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
