"""Empty, migrated databases made once per library version, which new local stores start from as copies.

Migrating a new Prefect database or MLflow store takes most of a local server's start, which every demo and
every test's temporary home would pay (figures: docs/architecture.md, "Why it is built this way").
``make databases`` prepares them under ``CACHE_DIR``, as it compiles the bytecode.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def prepare_template(template: Path, create: Callable[[Path], Path]) -> Path:
    """Make ``template`` unless it exists: ``create`` builds the database in an empty folder and returns it."""
    if template.exists():
        return template
    template.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=template.parent, prefix=f".{template.stem}-") as tmp:
        # Another process may have prepared it meanwhile: both copies are the same schema.
        os.replace(create(Path(tmp)), template)
    return template


def seed_from_template(database: Path, template: Path) -> None:
    """A database that does not exist yet starts as a copy of ``template``, when there is one.

    The copy appears at once or not at all (a hard link of a finished copy): two processes opening the same
    new database never write to a file the other replaced, and an existing one is never touched.
    """
    if database.exists() or not template.exists():
        return
    database.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=database.parent, prefix=f".{database.stem}-", suffix=".db")
    os.close(fd)
    try:
        shutil.copyfile(template, tmp)
        os.link(tmp, database)
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
