"""The version check every module of ``model_store.libraries`` runs before it touches a library's internals."""

from __future__ import annotations

from importlib import metadata


class LibraryVersionError(RuntimeError):
    """A library is installed at another version than the one our patches and private-API uses were written for."""


def installed_version(distribution: str) -> str | None:
    """The installed version of ``distribution``, or ``None`` when it is not installed (read without importing it)."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def check_version(distribution: str, written_for: str, module: str) -> None:
    """Raise ``LibraryVersionError`` unless ``distribution`` is installed at exactly ``written_for``."""
    installed = installed_version(distribution)
    if installed == written_for:
        return
    path = module.replace(".", "/") + ".py"
    raise LibraryVersionError(
        f"{path} was written for {distribution} {written_for}, but {distribution} "
        f"{installed or '(not installed)'} is installed. Install the locked version ({distribution}=={written_for},"
        f" `uv sync --frozen`), or check each internal name its docstring lists against {distribution} "
        f"{installed}, run tests/model_store/libraries/, and set its WRITTEN_FOR to {installed!r}."
    )
