"""Files named after the first and last stream entry they hold: a consumer that writes files acknowledges
entries only once their file exists, and after a crash skips the entries a written file already holds."""

from __future__ import annotations

from collections.abc import Iterable


def entry_order(entry_id: bytes | str) -> tuple[int, int]:
    """A stream entry id (``<ms>-<seq>``) as a sortable pair."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def range_name(entry_ids: Iterable[bytes]) -> str:
    """``<first>_<last>`` of the entries a file holds: the same entries give the same name."""
    ordered = sorted(entry_ids, key=entry_order)
    return f"{ordered[0].decode()}_{ordered[-1].decode()}"


def covered(names: Iterable[str], entry_id: bytes, prefix: str = "") -> bool:
    """Whether one of the files named ``<prefix><first>_<last>`` holds the entry.

    Each file holds every entry of its consumer's flush in that range: one consumer per group reads the
    stream in order, so a flush is a contiguous run of entries.
    """
    order = entry_order(entry_id)
    for name in names:
        first, _, last = name.removeprefix(prefix).partition("_")
        if last and entry_order(first) <= order <= entry_order(last):
            return True
    return False
