"""The Redis command of compose and Kubernetes, run for real with the local redis-server: it requires the password
it is given in the environment, keeps it out of its arguments, and its health check tells PONG from NOAUTH."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest
import redis
import yaml

from model_store.settings import REPO_ROOT
from tests.deploy.test_kubernetes import kustomize_build

PASSWORD = "deploy-test-5e0c3f"


def compose_redis() -> tuple[list[str], list[str]]:
    """The compose service's command and health check, as the container runs them (``$$`` is a ``$``)."""
    service = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"]["redis"]
    command = [part.replace("$$", "$") for part in service["command"]]
    kind, check = service["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    return command, ["sh", "-c", check]


def kubernetes_redis() -> tuple[list[str], list[str]]:
    resources = [d for d in yaml.safe_load_all(kustomize_build()) if d]
    (statefulset,) = [r for r in resources if r["kind"] == "StatefulSet" and r["metadata"]["name"] == "redis"]
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    return container["command"] + (container.get("args") or []), container["readinessProbe"]["exec"][
        "command"
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("where", ["compose", "kubernetes"])
def test_redis_requires_the_password_from_its_environment_and_keeps_it_out_of_its_arguments(
    where: str, tmp_path: Path
) -> None:
    binary = shutil.which("redis-server")
    if binary is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server and redis-cli are not installed")
    command, health_check = compose_redis() if where == "compose" else kubernetes_redis()
    port = free_port()
    # The container's redis-server, on a free loopback port with its files in the test's folder.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "redis-server"
    wrapper.write_text(
        f'#!/bin/sh\nexec {binary} "$@" --port {port} --bind 127.0.0.1 --dir {tmp_path} --save ""\n'
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "REDIS_PASSWORD": PASSWORD, "REDISCLI_AUTH": PASSWORD}
    log = (tmp_path / "redis.log").open("w")
    process = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:  # until it listens (a client's own retries would wait seconds)
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None, (tmp_path / "redis.log").read_text()
                assert time.monotonic() < deadline, "redis did not start"
                time.sleep(0.05)
        # Clients from URLs, as ours are (no retries with back-off on a refusal).
        client = redis.Redis.from_url(f"redis://:{PASSWORD}@127.0.0.1:{port}/0")
        assert client.ping()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis.from_url(f"redis://127.0.0.1:{port}/0").ping()
        # `exec`: redis-server is the container's main process, so it receives the stop signal itself.
        arguments = Path(f"/proc/{process.pid}/cmdline").read_bytes()
        assert b"redis-server" in arguments and PASSWORD.encode() not in arguments
        assert client.config_get("appendonly")["appendonly"] == "yes"
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        # The health check passes with the password and fails without it (redis-cli exits 0 on NOAUTH).
        probe = [part.replace("redis-cli", f"redis-cli -p {port}") for part in health_check]
        assert subprocess.run(probe, env=env, timeout=10).returncode == 0
        without = {k: v for k, v in env.items() if k != "REDISCLI_AUTH"}
        assert subprocess.run(probe, env=without, timeout=10, capture_output=True).returncode != 0
        client.close()
    finally:
        process.terminate()
        process.wait(10)
        log.close()
