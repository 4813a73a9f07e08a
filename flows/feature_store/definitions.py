"""`feast apply` of the repository's definitions, run as a Feast user runs it, only when something changed."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from model_store.settings import Settings, redacted_url

# One apply at a time in a process: a caller that arrives during another's apply waits, then finds it done.
_APPLYING = threading.Lock()


def apply_definitions(settings: Settings) -> str | None:
    """`feast apply`, as a Feast user runs it, when the definitions or their configuration changed.

    Feast's apply is idempotent but slow (it imports the repository in a fresh interpreter), so a
    fingerprint of what it reads is kept beside the registry and an unchanged repository is not applied again.
    It needs no data: every field is declared. Returns Feast's last lines of output, ``None`` when skipped.
    """
    with _APPLYING:
        return _apply_if_changed(settings)


def _apply_if_changed(settings: Settings) -> str | None:
    settings.export_feast_env()
    fingerprint = _feature_repo_fingerprint(settings)
    marker = settings.home / "feast" / f"{settings.feast_project}.applied"
    if marker.exists() and marker.read_text() == fingerprint and _registry_exists(settings):
        return None
    feast = Path(sys.executable).with_name("feast")
    # Every field is declared, so the tables need not exist yet (the first run applies before it writes them);
    # validating them would also start a Spark session to read every table's schema on the Spark store.
    repo, yaml = str(settings.feast_repo_path), str(settings.feast_yaml)
    command = [str(feast), "-c", repo, "-f", yaml, "apply", "--skip-source-validation"]
    with _registry_restored_on_failure(settings):
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"feast apply failed in {settings.feast_repo_path}:\n{done.stderr[-3000:]}")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(fingerprint)
    return " / ".join(done.stdout.strip().splitlines()[-2:])


@contextlib.contextmanager
def _registry_restored_on_failure(settings: Settings) -> Iterator[None]:
    """A file registry as it was before a failed apply: Feast rewrites it in place, and an apply that failed
    mid-write (a full disk) left a corrupt registry that every later run failed to parse."""
    registry = Path(str(settings.feast_registry))
    if "://" in str(settings.feast_registry):
        yield
        return
    backup = registry.with_name(f".{registry.name}.before-apply")
    if registry.exists():
        shutil.copy2(registry, backup)
    try:
        yield
    except BaseException:
        if backup.exists():
            os.replace(backup, registry)
        else:
            registry.unlink(missing_ok=True)
        raise
    backup.unlink(missing_ok=True)


def _feature_repo_fingerprint(settings: Settings) -> str:
    # Where the stores are, not their passwords: the marker is a file anyone reading RTML_HOME sees, and a new
    # password changes nothing that apply writes.
    env = {key: redacted_url(value) for key, value in settings.feast_env().items()}
    digest = hashlib.sha256(json.dumps(env, sort_keys=True).encode())
    for path in sorted(settings.feast_repo_path.glob("*")):
        if path.suffix in {".py", ".yaml"} or path.name == ".feastignore":
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def _registry_exists(settings: Settings) -> bool:
    registry = str(settings.feast_registry)
    return "://" in registry or Path(registry).exists()
