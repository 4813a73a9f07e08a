"""Files that appear whole or not at all: written to a hidden file in the same folder, then renamed over.

Every writer of a file another process may read (raw batches, manifests, profiles, prediction logs, reports,
the alert ledger) goes through ``write_atomically``: a reader sees the old file or the new one, never half of
one, and a failed write (a full disk, a kill) leaves only a hidden temporary file behind, or nothing.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

# mkstemp makes files private; the worker or the service reading them may run as another user.
FILE_MODE = 0o644


def write_atomically(path: Path, content: bytes | str | Callable[[Path], object]) -> Path:
    """Write ``content`` to ``path``: bytes, text (UTF-8), or a function that writes a file at the path it is
    given (``frame.to_parquet``). Returns ``path``; an ``OSError`` names it."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise OSError(error.errno, f"cannot write {path}: {error.strerror}", str(path)) from error
    partial = Path(name)
    try:
        if callable(content):
            os.close(fd)
            content(partial)
        else:
            with os.fdopen(fd, "wb") as handle:
                handle.write(content.encode() if isinstance(content, str) else content)
        os.chmod(partial, FILE_MODE)
        os.replace(partial, path)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise OSError(error.errno, f"cannot write {path}: {error.strerror or error}", str(path)) from error
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path
