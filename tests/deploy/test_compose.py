"""docker-compose.yml, .env.example and the Dockerfiles, validated offline (no Docker engine needed)."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from fnmatch import fnmatch
from pathlib import Path

import psycopg
import pytest
import yaml

from flows.deployments import WORK_POOL
from model_store.settings import REPO_ROOT
from tests.conftest import POSTGRES_DSN
from tests.deploy.stream_processes import HEALTH_PORT, STREAM_PROCESSES, duration_seconds

BIN = Path(sys.executable).parent
COMPOSE = REPO_ROOT / "docker-compose.yml"
# Compose interpolation: ${VAR}, ${VAR:-default}, ${VAR:?error}; $$ escapes a dollar for the container.
VARIABLE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)")
ONE_SHOT = {"prefect-deploy"}
RTML_HOME_MOUNT = "rtml-home:/var/lib/rtml"
REDIS_URL = "redis://:${REDIS_PASSWORD:?set REDIS_PASSWORD in .env}@redis:6379/0"
# What each container writes besides its volumes (tmpfs mount points), decided from its image and processes:
# see docs/deployment.md, "Security". Every service is in this table.
WRITABLE_TMPFS = {
    "postgres": {"/var/run/postgresql", "/tmp"},
    "redis": set(),
    "fraud-scorer": {"/tmp", "/var/lib/bentoml"},
    "prometheus": set(),
    "grafana": {"/tmp"},
    **{
        name: {"/tmp", "/home/rtml"}
        for name in ["prefect-server", "prefect-deploy", "prefect-worker", "mlflow", *STREAM_PROCESSES]
    },
}
# The images' own users: theirs for the third-party images, ours (deploy/*.Dockerfile) for the others.
USERS = {"postgres": "70:70", "redis": "999:1000", "prometheus": "65534:65534", "grafana": "472:0"}


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def env_example() -> dict[str, str]:
    """The variables .env.example documents, with their example values."""
    variables = {}
    for line in (REPO_ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            variables[key.strip()] = value.strip()
    return variables


def check_jsonschema(schema: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", schema, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_compose_file_matches_the_compose_specification() -> None:
    done = check_jsonschema("vendor.compose-spec", COMPOSE)
    assert done.returncode == 0, done.stdout + done.stderr


def test_schema_check_rejects_a_misspelt_key(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("    healthcheck:\n", "    healthchek:\n", 1))
    assert check_jsonschema("vendor.compose-spec", broken).returncode != 0


def test_every_dependency_names_a_service_and_every_named_volume_is_declared() -> None:
    spec = compose()
    services = spec["services"]
    declared_volumes = set(spec.get("volumes") or {})
    for name, service in services.items():
        for dependency in service.get("depends_on") or {}:
            assert dependency in services, f"{name} depends on unknown service {dependency!r}"
        for mount in service.get("volumes") or []:
            source = mount.split(":", 1)[0] if isinstance(mount, str) else mount["source"]
            if source.startswith((".", "/")):
                assert (REPO_ROOT / source).exists(), f"{name} mounts missing path {source}"
            else:
                assert source in declared_volumes, f"{name} uses undeclared volume {source!r}"


def test_long_running_services_have_health_checks_and_start_after_healthy_dependencies() -> None:
    services = compose()["services"]
    for name, service in services.items():
        if name not in ONE_SHOT:
            assert "healthcheck" in service, f"{name} has no healthcheck"
        for dependency, condition in (service.get("depends_on") or {}).items():
            wanted = "service_completed_successfully" if dependency in ONE_SHOT else "service_healthy"
            if dependency != "fraud-scorer":  # Prometheus may scrape a service that is still starting
                assert condition["condition"] == wanted, f"{name} -> {dependency}"


def test_every_variable_is_documented_in_env_example_and_no_secret_is_inline() -> None:
    text = COMPOSE.read_text()
    documented = env_example()
    referenced = set(VARIABLE.findall(text))
    assert referenced, "the compose file should take its settings from .env"
    assert referenced <= set(documented), (
        f"undocumented in .env.example: {sorted(referenced - set(documented))}"
    )
    for line in text.splitlines():
        if re.search(r"(PASSWORD|SECRET|TOKEN)\w*\s*:", line):
            assert "${" in line, f"inline secret: {line.strip()}"
    assert all(documented[k] in ("", "change-me") for k in documented if "PASSWORD" in k)


def test_platform_processes_share_one_configuration_of_the_stores() -> None:
    services = compose()["services"]
    for name in ("prefect-worker", "prefect-deploy", "fraud-scorer", *STREAM_PROCESSES):
        env = services[name]["environment"]
        assert env["RTML_HOME"] == "/var/lib/rtml", name
        assert env["RTML_FEAST_REGISTRY"].startswith("postgresql+psycopg://"), name
        assert env["RTML_REDIS_URL"] == REDIS_URL, name
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000", name
        assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api", name
    server_env = services["prefect-server"]["environment"]
    assert server_env["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    mlflow = services["mlflow"]
    command = mlflow["command"]
    assert command[command.index("--workers") + 1] == "1"
    assert mlflow["environment"]["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    # MLflow 3 refuses Host headers it does not know: the other containers call it "mlflow:5000".
    assert "mlflow:5000" in command[command.index("--allowed-hosts") + 1].split(",")


@pytest.mark.parametrize("name", sorted(STREAM_PROCESSES))
def test_stream_process_runs_its_module_from_the_worker_image_and_stops_gracefully(name: str) -> None:
    process = STREAM_PROCESSES[name]
    services = compose()["services"]
    service = services[name]
    assert process.role_in_source(), f"services/stream/{process.module}.py has no role {process.role!r}"
    assert service["command"] == process.command
    assert service["image"] == services["prefect-worker"]["image"]
    assert service["build"]["dockerfile"] == "deploy/worker.Dockerfile"
    port = int(service["environment"].get("RTML_STREAM_HEALTH_PORT", HEALTH_PORT))
    check = " ".join(service["healthcheck"]["test"])
    assert f"http://127.0.0.1:{port}/readyz" in check, check
    assert duration_seconds(service["healthcheck"]["start_period"]) >= 30, (
        "Feast and whylogs take seconds to import"
    )
    assert service["restart"] == "unless-stopped"
    # SIGTERM: the batch in hand is committed and a buffering process writes what it holds, then exit 0.
    assert duration_seconds(service["stop_grace_period"]) > 10, (
        "Docker's default 10 s is all a stop would get"
    )
    needs = {"redis"} | ({"postgres"} if process.module in ("processor", "scorer") else set())
    needs |= {"mlflow"} if process.module == "scorer" else set()
    assert needs <= set(service["depends_on"]), (
        f"{name} starts before {sorted(needs - set(service['depends_on']))}"
    )
    # Optional processes sit behind a profile: `docker compose up` leaves them off.
    assert bool(service.get("profiles")) == process.optional
    assert "ports" not in service, "nothing calls a stream process from the host; replicas would clash"


def test_processor_runs_one_container_per_partition() -> None:
    processor = compose()["services"]["stream-processor"]
    partitions = processor["environment"]["RTML_STREAM_PARTITIONS"]
    assert partitions == "${RTML_STREAM_PARTITIONS:-1}"
    assert processor["deploy"]["replicas"] == partitions
    assert int(env_example()["RTML_STREAM_PARTITIONS"]) >= 1


def test_rtml_home_is_mounted_only_by_the_processes_that_write_files() -> None:
    """Flow runs and the two stream writers share it; the service and the other stream processes write none."""
    services = compose()["services"]
    mounting = {
        name for name, service in services.items() if RTML_HOME_MOUNT in (service.get("volumes") or [])
    }
    writers = {name for name, process in STREAM_PROCESSES.items() if process.writes_files}
    assert mounting == {"prefect-worker"} | writers
    for name in STREAM_PROCESSES:
        assert set(services[name].get("volumes") or []) <= {RTML_HOME_MOUNT}, name


def test_worker_pool_matches_prefect_yaml() -> None:
    services = compose()["services"]
    pools = {
        d["work_pool"]["name"]
        for d in yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())["deployments"]
    }
    command = services["prefect-worker"]["command"]
    assert pools == {command[command.index("--pool") + 1]}
    assert WORK_POOL in " ".join(services["prefect-deploy"]["command"])


def test_database_urls_name_databases_the_init_script_creates(tmp_path: Path) -> None:
    text = COMPOSE.read_text()
    used = set(re.findall(r"@postgres:5432/(\w+)", text))
    script = (REPO_ROOT / "deploy" / "postgres" / "create-databases.sh").read_text()
    created = set(re.search(r"RTML_DATABASES:-([\w ]+)\}", script).group(1).split())
    assert used == created == {"mlflow", "prefect", "feast"}


def test_init_script_creates_the_databases_on_a_real_postgres() -> None:
    names = [f"rtml_init_{uuid.uuid4().hex[:8]}_{db}" for db in ("a", "b")]
    env = {"POSTGRES_USER": "postgres", "RTML_DATABASES": " ".join(names), "PATH": "/usr/bin:/bin"}
    dsn = psycopg.conninfo.conninfo_to_dict(POSTGRES_DSN)
    env.update(PGHOST=str(dsn.get("host", "127.0.0.1")), PGPORT=str(dsn.get("port", 5432)))
    try:
        done = subprocess.run(
            ["bash", str(REPO_ROOT / "deploy" / "postgres" / "create-databases.sh")],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        with psycopg.connect(POSTGRES_DSN) as conn:
            rows = conn.execute(
                "select datname from pg_database where datname = any(%s)", (names,)
            ).fetchall()
        assert sorted(r[0] for r in rows) == sorted(names)
    finally:
        with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
            for name in names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(instruction, arguments) pairs, continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's ignore rules: the last matching pattern wins; ``!`` re-includes."""
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").rstrip("/")
        if fnmatch(path, pattern) or path.startswith(pattern + "/") or pattern == "*":
            result = not negate
    return result


def test_worker_image_copies_what_exists_and_its_ignore_file_lets_it_through() -> None:
    dockerfile = REPO_ROOT / "deploy" / "worker.Dockerfile"
    patterns = [
        line.strip()
        for line in (dockerfile.parent / "worker.Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = []
    for instruction, args in dockerfile_instructions(dockerfile):
        if instruction == "COPY" and "--from=" not in args:
            sources += args.split()[:-1]
        if instruction == "RUN":
            sources += re.findall(r"type=bind,source=([\w./-]+)", args)
    assert {
        "uv.lock",
        "pyproject.toml",
        "prefect.yaml",
        "flows/",
        "model_store/",
        "feature_repo/",
        "services/",  # the stream processes run from this image
    } <= set(sources)
    for source in sources:
        assert (REPO_ROOT / source).exists(), f"worker.Dockerfile copies missing {source}"
        assert not ignored(source.rstrip("/"), patterns), f"{source} is excluded by the .dockerignore"
    assert ignored(".venv", patterns) and ignored(".rtml", patterns)
    cmd = dict(dockerfile_instructions(dockerfile))["CMD"]
    assert yaml.safe_load(cmd)[:4] == ["prefect", "worker", "start", "--pool"]


def test_service_image_is_built_from_the_bento_context() -> None:
    instructions = dockerfile_instructions(REPO_ROOT / "deploy" / "service.Dockerfile")
    copies = [args for instruction, args in instructions if instruction == "COPY"]
    assert any("--from=bento" in c and "env/python/requirements.txt" in c for c in copies)
    assert any("--from=bento" in c and c.split()[-2] == "." for c in copies)
    cmd = yaml.safe_load(dict(instructions)["CMD"])
    assert cmd[:2] == ["bentoml", "serve"] and cmd[cmd.index("--port") + 1] == "3000"
    build = compose()["services"]["fraud-scorer"]["build"]
    assert build["dockerfile"] == "service.Dockerfile" and "bento" in build["additional_contexts"]


@pytest.mark.parametrize("name", ["worker.Dockerfile", "service.Dockerfile"])
def test_images_run_as_an_unprivileged_user(name: str) -> None:
    users = [
        args
        for instruction, args in dockerfile_instructions(REPO_ROOT / "deploy" / name)
        if instruction == "USER"
    ]
    assert users and users[-1] not in ("root", "0")


def image_user(dockerfile: str) -> tuple[str, str]:
    """The name and ``uid:gid`` of the user a Dockerfile creates and runs as."""
    text = (REPO_ROOT / "deploy" / dockerfile).read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, flags=re.MULTILINE))
    uid, gid, name = re.search(r"useradd --uid (\S+) --gid (\S+) --create-home (\w+)", text).groups()
    uid, gid = (args.get(v.strip('"$'), v) for v in (uid, gid))
    user = dict(dockerfile_instructions(REPO_ROOT / "deploy" / dockerfile))["USER"]
    assert re.sub(r"\$(\w+)", lambda m: args[m.group(1)], user) == f"{uid}:{gid}", dockerfile
    return name, f"{uid}:{gid}"


def test_processes_sharing_rtml_home_write_it_as_the_same_user() -> None:
    """Several containers write one volume; different uids would leave some of them read-only."""
    services = compose()["services"]
    writers = [
        name for name, service in services.items() if RTML_HOME_MOUNT in (service.get("volumes") or [])
    ]
    assert len(writers) > 1
    assert {services[name]["build"]["dockerfile"] for name in writers} == {"deploy/worker.Dockerfile"}
    name, uid_gid = image_user("worker.Dockerfile")
    assert re.search(
        rf"chown -R {name}:{name} /var/lib/rtml", (REPO_ROOT / "deploy" / "worker.Dockerfile").read_text()
    )
    assert {services[writer]["user"] for writer in writers} == {uid_gid}


def test_every_container_is_hardened_and_writes_only_its_volumes_and_tmpfs() -> None:
    """Non-root, read-only root filesystem, no capabilities, no privilege escalation, Docker's default seccomp
    profile (nothing turns it off); the writable places are the ones the table above names."""
    services = compose()["services"]
    assert set(services) == set(WRITABLE_TMPFS)
    ours = {
        "deploy/worker.Dockerfile": image_user("worker.Dockerfile")[1],
        "service.Dockerfile": image_user("service.Dockerfile")[1],
    }
    for name, service in services.items():
        assert service.get("read_only") is True, name
        assert service.get("cap_drop") == ["ALL"] and not service.get("cap_add"), name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        assert not any("seccomp" in option or "apparmor" in option for option in service["security_opt"]), (
            name
        )
        assert not service.get("privileged"), name
        expected_user = ours[service["build"]["dockerfile"]] if "build" in service else USERS[name]
        assert service["user"] == expected_user, name
        assert not service["user"].startswith(("0:", "root")), name
        assert {entry.split(":", 1)[0] for entry in service.get("tmpfs", [])} == WRITABLE_TMPFS[name], name
    # The scorer's BentoML home is that tmpfs; the bento it serves is elsewhere in the image.
    service_image = (REPO_ROOT / "deploy" / "service.Dockerfile").read_text()
    assert re.search(r"BENTOML_HOME=/var/lib/bentoml/?\s", service_image)
    assert re.search(r"BENTO_PATH=/home/bentoml/bento\s", service_image)
