"""Soak: the scoring service at a fixed request rate for a long time, with the window processor and the traffic log.

Run: `.venv/bin/python tests/benchmarks/bench_soak.py [--minutes 30] [--rate 1000] [--window-minutes 5]`
(not part of make test; docs/reliability.md, scenario 9). Builds the temporary home bench_service.py builds
(synthetic features for 20,000 customers and 2,000 merchants, a 300-tree CatBoost) on a redis-server of its own,
starts `bentoml serve`, `services.stream.processor` and `services.stream.traffic`, then drives `POST /score` with
wrk at a fixed rate: Debian's wrk has no `-R`, so a Lua script paces each thread to its share of the rate (each
request is given the next slot of a schedule; a late one goes at once, so a slow service shows as latency, not
as a lower rate). Each request is a new transaction (unique id). One wrk run per window prints its rate,
latency percentiles and errors; the service's resident memory (server and workers) is sampled throughout, and
each window ends with the CPU each process used in it, Redis's memory (what a latency creep would come from)
and the kernel's word when the hypervisor paused the whole VM in it (a snapshot once froze a window for 8 s).

Targets (issue 18): resident memory growth after the first window <= 10 %; p99 of every window within 20 % of
the first window's; 0 errors; every decision answered 200 in the decision record and the prediction log.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
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

THREADS = 2
CONNECTIONS = 16
TARGETS = {
    "memory": "resident memory growth after the first window <= 10 %",
    "p99": "p99 of every window within 20 % of the first window's",
    "errors": "0 errors (socket errors and non-2xx)",
    "recorded": "every decision answered 200 in the decision record and the prediction log",
}

PACED_LUA = """
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_usec; } soak_timeval;
int gettimeofday(soak_timeval *tv, void *tz);
]]
local tv = ffi.new("soak_timeval")
local function now_ms()
  ffi.C.gettimeofday(tv, nil)
  return tonumber(tv.tv_sec) * 1000 + tonumber(tv.tv_usec) / 1000
end

local created = 0
function setup(thread)
  created = created + 1
  thread:set("thread_id", created)
end

local interval, next_at, n, window
local headers = {["Content-Type"] = "application/json"}
local channels = {"chip", "contactless", "online"}
function init(args)
  interval = tonumber(args[1])  -- milliseconds between this thread's requests
  window = args[2]
  n = 0
  math.randomseed(thread_id * 7919 + tonumber(window))
  next_at = now_ms()
end

-- Each request takes the next slot of the thread's schedule; a late one goes at once.
function delay()
  local wait = next_at - now_ms()
  next_at = next_at + interval
  if wait < 0 then return 0 end
  return wait
end

function request()
  n = n + 1
  local body = string.format(
    '{"transaction_id":"soak-%s-%d-%d","customer_id":%d,"merchant_id":%d,"amount":%.2f,'
    .. '"timestamp":"%s","channel":"%s"}',
    window, thread_id, n, math.random(1, __CUSTOMERS__), math.random(1, __MERCHANTS__),
    math.random(100, 50000) / 100, os.date("!%Y-%m-%dT%H:%M:%S+00:00"), channels[n % 3 + 1])
  return wrk.format("POST", "/score", headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "SOAK_JSON {\\"p50_us\\": %d, \\"p99_us\\": %d, \\"p999_us\\": %d, \\"max_us\\": %d, \\"requests\\": %d, "
    .. "\\"duration_us\\": %d, \\"socket_errors\\": %d, \\"non_2xx\\": %d}\\n",
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max, summary.requests,
    summary.duration, e.connect + e.read + e.write + e.timeout, e.status))
end
"""


def run_window(url: str, script: Path, rate: int, seconds: int, index: int) -> dict[str, Any]:
    interval_ms = THREADS * 1000 / rate
    done = subprocess.run(
        [
            *("wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{seconds}s", "--timeout", "10s"),
            *("-s", str(script), url, "--", f"{interval_ms:.4f}", str(index)),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    line = next(x for x in done.stdout.splitlines() if x.startswith("SOAK_JSON "))
    figures = json.loads(line.removeprefix("SOAK_JSON "))
    figures["rps"] = figures["requests"] / (figures["duration_us"] / 1e6)
    return figures


class MemorySampler:
    """Resident memory of process trees (a server and its workers), sampled every few seconds in a thread."""

    def __init__(self, pids: dict[str, int], every: float = 5.0) -> None:
        self.pids = pids
        self.every = every
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.samples.append(
                (time.monotonic(), {name: tree_rss_mb(pid) for name, pid in self.pids.items()})
            )

    def latest(self) -> dict[str, float]:
        return self.samples[-1][1] if self.samples else {}


def tree_rss_mb(pid: int) -> float:
    import psutil

    try:
        root = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20
    except psutil.NoSuchProcess:
        return 0.0


def tree_cpu_seconds(pid: int) -> float:
    """User and system CPU seconds a process and its children have used so far."""
    import psutil

    try:
        root = psutil.Process(pid)
        times = [p.cpu_times() for p in [root, *root.children(recursive=True)]]
    except psutil.NoSuchProcess:
        return 0.0
    return sum(t.user + t.system for t in times)


def cpu_steal_percent(before: list[int], after: list[int]) -> float:
    """Share of the machine's CPU time the hypervisor gave to others between two ``/proc/stat`` readings: a VM's
    neighbours show here, not in our processes' figures."""
    total = sum(after[:8]) - sum(before[:8])
    return 100 * (after[7] - before[7]) / total if total else 0.0


def cpu_times() -> list[int]:
    """The machine's ``cpu`` line of ``/proc/stat``: user, nice, system, idle, iowait, irq, softirq, steal."""
    with open("/proc/stat") as stat:
        return [int(v) for v in stat.readline().split()[1:9]]


# Kernel log lines that say the hypervisor snapshotted the VM or reclaimed its memory: the machine stood still.
VM_EVENTS = ("virtual machine fork", "drop_caches")


def uptime_seconds() -> float:
    with open("/proc/uptime") as uptime:
        return float(uptime.read().split()[0])


def vm_events(since: float, until: float) -> list[str]:
    """Kernel log lines between two uptimes that name a pause of the whole VM (a snapshot, say): a window holding
    one measures the machine, not the service. Empty where the kernel log cannot be read."""
    try:
        log = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    found = []
    for line in log.splitlines():
        stamp, _, message = line.partition("]")
        with contextlib.suppress(ValueError):
            if since <= float(stamp.strip("[ ")) <= until and any(e in message for e in VM_EVENTS):
                found.append(f"{message.strip()} at uptime {float(stamp.strip('[ ')):.0f} s")
    return found


def child_pid(module: str) -> int:
    """The pid of this process's child running ``python -m <module>``."""
    import psutil

    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if module in child.cmdline():
                return child.pid
    raise LookupError(f"no child process runs {module}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--rate", type=int, default=1000, help="requests per second")
    parser.add_argument("--window-minutes", type=float, default=5)
    args = parser.parse_args()
    if subprocess.run(["which", "wrk"], capture_output=True).returncode != 0:
        sys.exit("wrk is not installed (apt-get install wrk, or `make bench` installs it)")
    from model_store import libraries

    libraries.typeguard.apply_patches()
    import redis

    from deploy.local.replay import wait_caught_up
    from deploy.local.servers import free_port, stream_process
    from model_store.profiles import ProfileStore
    from model_store.settings import clear_settings, get_settings
    from tests.benchmarks.bench_service import (
        BENTOML_SERVE,
        N_CUSTOMERS,
        N_MERCHANTS,
        prepare_home,
        start_redis,
        start_server,
        stop_server,
        wait_ready,
    )

    home = Path(tempfile.mkdtemp(prefix="bench_soak_"))
    print(f"load average at start: {os.getloadavg()}", flush=True)
    redis_process, redis_url = start_redis(home)
    service = None
    try:
        project = f"soak_{uuid.uuid4().hex[:8]}"
        env = {
            **os.environ,
            **prepare_home(home, project, redis_url),
            "PYTHONPATH": str(ROOT),
            "BENTOML_DO_NOT_TRACK": "true",
            "RTML_TRAFFIC_FLUSH_SECONDS": "60",
        }
        clear_settings()
        settings = get_settings()
        script = home / "paced.lua"
        script.write_text(
            PACED_LUA.replace("__CUSTOMERS__", str(N_CUSTOMERS)).replace("__MERCHANTS__", str(N_MERCHANTS))
        )
        windows = max(1, round(args.minutes / args.window_minutes))
        seconds = int(args.window_minutes * 60)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = home / "service.log"
        service = start_server(BENTOML_SERVE, "services.scorer.service:OnlineScorer", env, port, log)
        results: list[dict[str, Any]] = []
        with contextlib.ExitStack() as stack:
            for name in ("processor", "traffic"):
                stack.enter_context(stream_process(name, env, home / f"{name}.log"))
            wait_ready(url, service, log)
            pids = {
                "service": service.pid,
                **{name: child_pid(f"services.stream.{name}") for name in ("processor", "traffic")},
            }
            print(
                f"{windows} windows of {seconds} s at {args.rate:,} req/s, {CONNECTIONS} connections",
                flush=True,
            )
            # Redis's CPU too: its memory is the stream filling up to its maximum length, reported apart.
            cpu_pids = {**pids, "redis": redis_process.pid}
            client = redis.Redis.from_url(redis_url)
            with MemorySampler(pids) as memory:
                for index in range(windows):
                    cpu_before = {name: tree_cpu_seconds(pid) for name, pid in cpu_pids.items()}
                    machine_before, started = cpu_times(), uptime_seconds()
                    figures = run_window(url, script, args.rate, seconds, index)
                    figures["rss_mb"] = memory.latest()
                    figures["cpu_percent"] = {
                        name: (tree_cpu_seconds(pid) - cpu_before[name]) / seconds * 100
                        for name, pid in cpu_pids.items()
                    }
                    results.append(figures)
                    print(
                        f"window {index + 1}: {figures['rps']:,.0f} req/s, p50 {figures['p50_us'] / 1000:.2f} ms, "
                        f"p99 {figures['p99_us'] / 1000:.2f} ms, p99.9 {figures['p999_us'] / 1000:.1f} ms, "
                        f"max {figures['max_us'] / 1000:.0f} ms, errors {figures['socket_errors']} socket + "
                        f"{figures['non_2xx']} non-2xx; RSS MB "
                        + ", ".join(f"{k} {v:.0f}" for k, v in figures["rss_mb"].items())
                        + "; CPU % "
                        + ", ".join(f"{k} {v:.0f}" for k, v in figures["cpu_percent"].items())
                        + f"; CPU stolen by the hypervisor {cpu_steal_percent(machine_before, cpu_times()):.1f} %"
                        + f"; Redis used memory {client.info('memory')['used_memory'] / 2**20:,.0f} MB"
                        + f"; VM events: {'; '.join(vm_events(started, uptime_seconds())) or 'none'}",
                        flush=True,
                    )
            stream = settings.stream("transactions")
            groups = [g["name"].decode() for g in client.xinfo_groups(stream)]
            try:  # the traffic log writes what it holds once caught up
                wait_caught_up(client, stream, groups, timeout=600)
            except TimeoutError as error:
                print(f"  {error}: the counts below fall short", flush=True)
            recorded = client.xlen(stream)
            client.close()
        store = ProfileStore(settings.profile_store, settings.model_name)
        from datetime import UTC, datetime, timedelta

        now = datetime.now(UTC)
        logged = len(store.read_predictions(now - timedelta(hours=3), now + timedelta(hours=1)))
    finally:
        if service is not None:
            stop_server(service)
        redis_process.terminate()
        redis_process.wait(10)
        shutil.rmtree(home, ignore_errors=True)

    answered = sum(r["requests"] - r["non_2xx"] for r in results)
    errors = sum(r["socket_errors"] + r["non_2xx"] for r in results)
    first_rss = results[0]["rss_mb"]
    last_rss = results[-1]["rss_mb"]
    print("\nsummary:")
    for name in first_rss:
        growth = (last_rss[name] - first_rss[name]) / first_rss[name] * 100 if first_rss[name] else 0.0
        print(
            f"  RSS {name}: {first_rss[name]:.0f} MB after window 1, {last_rss[name]:.0f} MB at the end ({growth:+.1f} %)"
        )
    base = results[0]["p99_us"]
    print(
        "  p99 per window vs the first: "
        + ", ".join(f"{(r['p99_us'] - base) / base * 100:+.0f} %" for r in results[1:])
    )
    # wrk stops counting at each window's end: the requests then in flight are answered and recorded, not
    # counted (at most one per connection and window), so the record may hold slightly more.
    print(
        f"  errors: {errors}; answered 2xx {answered:,}; decision record {recorded:,} (at least every answered: "
        f"{recorded >= answered}, in flight at window ends: {recorded - answered}); prediction log {logged:,} "
        f"(equals the record: {logged == recorded})"
    )
    print("\ntargets:")
    for name, target in TARGETS.items():
        print(f"  {name:<9} {target}")
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
