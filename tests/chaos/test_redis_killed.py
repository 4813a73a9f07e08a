"""Scenario 2: Redis SIGKILLed under load, down for a while, restarted from its append-only file.

While it is down the service answers 503 with ``Retry-After`` and nothing else fails; once Redis answers again the
service and the stream consumers carry on without a restart, and what Redis held (online features, the decision
record, the consumer groups) is still there.
"""

from __future__ import annotations

import time

import psutil

from tests.chaos.conftest import Stack, scaled

CONNECTIONS = 8
PROCESSOR_GROUP = "windows-0-of-1"


def entries_read(stack: Stack, group: str) -> int:
    import redis

    client = stack.client()
    try:
        for info in client.xinfo_groups(stack.settings.stream("transactions")):
            if info["name"].decode() == group:
                return int(info["entries-read"] or 0)
    except redis.ConnectionError:
        pass
    finally:
        client.close()
    return -1


def first_progress(stack: Stack, group: str, since: int, timeout: float = 30) -> float:
    """When ``group`` next reads past ``since`` entries (``time.monotonic()``)."""
    deadline = time.monotonic() + timeout
    while entries_read(stack, group) <= since:
        if time.monotonic() > deadline:
            raise AssertionError(f"{group} made no progress within {timeout:.0f} s of Redis answering")
        time.sleep(0.02)
    return time.monotonic()


def test_redis_killed_under_load_gives_503_then_everything_recovers_without_restart(
    stack: Stack, figures: list[str]
) -> None:
    seconds, down = scaled(1, 10), scaled(2, 10)
    ours = [p.pid for p in psutil.Process().children(recursive=True) if p.name() != "redis-server"]
    with stack.load(CONNECTIONS) as load:
        load.wait_for(50)
        time.sleep(seconds)
        idle_before = stack.idle_values()
        killed_at = time.monotonic()
        stack.redis.kill()
        time.sleep(down)
        restarting_at = time.monotonic()
        stack.redis.start()  # returns once it answers PING, the append-only file loaded
        up_at = time.monotonic()
        read_before = entries_read(stack, PROCESSOR_GROUP)
        processor_at = first_progress(stack, PROCESSOR_GROUP, read_before)
        load.wait_for(len(load.ids(200)) + 50)
        time.sleep(seconds)
    survivors = [pid for pid in ours if psutil.pid_exists(pid)]
    service_at = min(a.answered for a in load.answers if a.status == 200 and a.sent >= up_at)
    answered = load.ids(200)
    stack.wait_caught_up("traffic-log", PROCESSOR_GROUP)
    recorded, logged = stack.recorded_ids(), stack.logged_ids()
    unavailable = [a for a in load.answers if a.status == 503]

    figures.append(
        f"{CONNECTIONS} connections; Redis SIGKILLed and down {down:.0f} s, restarted from its AOF"
    )
    figures.append(
        f"answers by status: all {load.statuses()}, while down {load.statuses(killed_at, restarting_at)}"
    )
    figures.append(
        f"503 with Retry-After: {sum(a.retry_after is not None for a in unavailable)} of {len(unavailable)}"
    )
    figures.append(
        f"after Redis answered: first 200 in {service_at - up_at:.2f} s, "
        f"processor's first read in {processor_at - up_at:.2f} s; "
        f"processes restarted: {len(ours) - len(survivors)} of {len(ours)}"
    )
    figures.append(
        f"answered 200: {len(answered):,}; missing from the decision record: {len(answered - recorded)}, "
        f"from the prediction log: {len(answered - logged)}; idle entities' online values changed: "
        f"{sum(idle_before[k] != v for k, v in stack.idle_values().items())} of {len(idle_before)}"
    )
    assert set(load.statuses()) <= {200, 503}
    assert unavailable and all(a.retry_after == "1" for a in unavailable)
    assert survivors == ours
    assert answered - recorded == set() and answered - logged == set()
    assert stack.idle_values() == idle_before and all(idle_before.values())


def test_every_redis_we_deploy_persists_as_the_one_this_scenario_kills() -> None:
    """Compose, Kubernetes and the local services run Redis with its append-only file fsynced every second."""
    from model_store.settings import REPO_ROOT

    for path in ("docker-compose.yml", "deploy/k8s/redis.yaml", "deploy/local/services.sh"):
        text = " ".join((REPO_ROOT / path).read_text().replace("\\\n", " ").split())
        assert "--appendonly yes --appendfsync everysec" in text, path
