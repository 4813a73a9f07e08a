"""Files appear whole or not at all, and a failed write names the file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from model_store.atomic_files import write_atomically


def test_content_appears_whole_and_replaces_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b.json"
    write_atomically(path, '{"v": 1}')
    write_atomically(path, b'{"v": 2}')
    write_atomically(path, lambda partial: partial.write_text('{"v": 3}'))
    assert path.read_text() == '{"v": 3}' and oct(path.stat().st_mode & 0o777) == "0o644"
    assert sorted(p.name for p in path.parent.iterdir()) == ["b.json"]


def test_a_failed_write_leaves_the_old_file_and_no_partial_one(tmp_path: Path) -> None:
    path = tmp_path / "b.parquet"
    write_atomically(path, b"old")

    def half_then_fail(partial: Path) -> None:
        partial.write_bytes(b"ne")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        write_atomically(path, half_then_fail)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["b.parquet"]


def test_a_full_disk_error_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_space(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)
    target = tmp_path / "report.html"
    with pytest.raises(OSError, match=f"cannot write {target}: No space left on device") as raised:
        write_atomically(target, "<html>")
    assert raised.value.errno == 28 and not target.exists() and list(tmp_path.iterdir()) == []
