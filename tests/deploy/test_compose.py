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

from model_store.settings import REPO_ROOT
from tests.conftest import POSTGRES_DSN

BIN = Path(sys.executable).parent
COMPOSE = REPO_ROOT / "docker-compose.yml"
# Compose interpolation: ${VAR}, ${VAR:-default}, ${VAR:?error}; $$ escapes a dollar for the container.
VARIABLE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)")
ONE_SHOT = {"prefect-deploy"}


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
    for name in ("prefect-worker", "prefect-deploy", "fraud-scorer"):
        env = services[name]["environment"]
        assert env["RTML_FEAST_REGISTRY"].startswith("postgresql+psycopg://"), name
        assert env["RTML_REDIS_URL"] == "redis://redis:6379/0", name
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
    # The worker's flow runs and the service share RTML_HOME: serving profiles feed the drift report.
    assert "rtml-home:/var/lib/rtml" in services["prefect-worker"]["volumes"]
    assert "rtml-home:/var/lib/rtml" in services["fraud-scorer"]["volumes"]


def test_worker_pool_matches_prefect_yaml() -> None:
    services = compose()["services"]
    pools = {
        d["work_pool"]["name"]
        for d in yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())["deployments"]
    }
    command = services["prefect-worker"]["command"]
    assert pools == {command[command.index("--pool") + 1]}
    assert "local-process" in " ".join(services["prefect-deploy"]["command"])


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
    assert {"uv.lock", "pyproject.toml", "prefect.yaml", "flows/", "model_store/", "feature_repo/"} <= set(
        sources
    )
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


def test_images_sharing_rtml_home_write_it_as_the_same_user() -> None:
    """The worker and the service write one volume; different uids would leave one of them read-only."""
    uids = set()
    for name in ("worker.Dockerfile", "service.Dockerfile"):
        text = (REPO_ROOT / "deploy" / name).read_text()
        declared = re.search(r"ARG BENTO_USER_UID=(\d+)", text)
        uid = declared.group(1) if declared else re.search(r"useradd --uid (\d+)", text).group(1)
        uids.add(uid)
    assert len(uids) == 1, uids
    services = compose()["services"]
    assert "rtml-home:/var/lib/rtml" in services["prefect-worker"]["volumes"]
    assert "rtml-home:/var/lib/rtml" in services["fraud-scorer"]["volumes"]
