"""The API keys the scoring service accepts: several at once, so a key is rotated without downtime.

A request's ``X-API-Key`` is compared with every configured key, each time, with ``hmac.compare_digest`` on
SHA-256 digests, and with random digests that match nothing up to ``SLOTS`` comparisons: the check takes as long
whichever key matches, whether one does, however long the presented value is, and whether one key or ``SLOTS``
are configured, so its timing tells neither a key's length nor which key, nor how many there are.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable

from pydantic import SecretStr

# Comparisons per request, whatever the number of keys (up to this many; more keys cost one comparison each).
SLOTS = 8


class ApiKeys:
    """The accepted keys, held as digests."""

    def __init__(self, keys: Iterable[SecretStr]) -> None:
        values = [key.get_secret_value() for key in keys]
        if any(not value for value in values):
            raise ValueError("an API key is empty: remove it from RTML_API_KEYS / RTML_API_KEY")
        self._digests = [_digest(value) for value in dict.fromkeys(values)]
        # Random 32-byte values: no presented key hashes to one (a chance of 2**-256 per comparison).
        self._padding = [os.urandom(32) for _ in range(SLOTS - len(self._digests))]

    @property
    def required(self) -> bool:
        """Whether requests must present a key (no key configured: the service is open)."""
        return bool(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def accept(self, presented: str | None) -> bool:
        """Whether ``presented`` is one of the keys; compares with every key, without stopping early."""
        if presented is None:
            presented = ""
        digest = _digest(presented)
        matched = False
        for key in (*self._digests, *self._padding):
            matched |= hmac.compare_digest(digest, key)
        return matched


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()
