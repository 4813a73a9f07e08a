"""The local platform's prepared Prefect database: made once per Prefect version, copied into new homes only."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from deploy.local import servers

pytestmark = pytest.mark.slow


def test_prepared_database_is_migrated_once_and_seeds_only_new_homes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(servers, "CACHE_DIR", tmp_path / "cache")
    template = servers.prepare_prefect_database()
    assert template == servers.prefect_database_template() and template.is_file()
    with sqlite3.connect(template) as db:
        (revision,) = db.execute("select version_num from alembic_version").fetchone()
        assert revision and db.execute("select count(*) from flow_run").fetchone() == (0,)
    made = template.stat().st_mtime_ns
    assert servers.prepare_prefect_database() == template
    assert template.stat().st_mtime_ns == made, "prepared again"
    assert not list(template.parent.glob(".prefect-*")), "temporary folder left behind"

    fresh = tmp_path / "fresh"
    servers.seed_prefect_database(fresh)
    assert (fresh / "prefect.db").read_bytes() == template.read_bytes()
    used = tmp_path / "used"
    used.mkdir()
    (used / "prefect.db").write_bytes(b"a server's own state")
    servers.seed_prefect_database(used)
    assert (used / "prefect.db").read_bytes() == b"a server's own state"


def test_without_a_prepared_database_a_new_home_is_left_to_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(servers, "CACHE_DIR", tmp_path / "empty-cache")
    servers.seed_prefect_database(tmp_path / "home")
    assert not (tmp_path / "home" / "prefect.db").exists()
