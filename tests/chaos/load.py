"""Closed-loop load on ``POST /score`` that keeps every answer: which transaction got which status, and when.

wrk measures throughput but cannot say which request got which answer; a fault scenario needs exactly that (every
decision answered 200 must be in the decision record). One thread per connection, each sending unique
transactions back to back over its own keep-alive connection and reconnecting after a failure.
"""

from __future__ import annotations

import http.client
import itertools
import json
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

CONNECTION_FAILED = 0  # the status recorded when no HTTP answer came (refused, reset, timed out)


@dataclass(frozen=True)
class Answer:
    transaction_id: str
    status: int
    retry_after: str | None
    sent: float  # time.monotonic()
    answered: float


class ScoringLoad:
    """``connections`` threads posting to ``url``; set ``url`` to move the load to a restarted service."""

    def __init__(self, url: str, connections: int, customers: list[int], merchants: list[int]) -> None:
        self.url = url
        self.connections = connections
        self.customers = customers
        self.merchants = merchants
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._run = f"chaos-{time.time_ns()}"

    def __enter__(self) -> ScoringLoad:
        self._threads = [
            threading.Thread(target=self._connection, args=(i,), daemon=True) for i in range(self.connections)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _body(self, connection: int, n: int) -> dict[str, object]:
        return {
            "transaction_id": f"{self._run}-{connection}-{n}",
            "customer_id": self.customers[(connection * 7 + n) % len(self.customers)],
            "merchant_id": self.merchants[(connection * 3 + n) % len(self.merchants)],
            "amount": round(5 + (n * 37 % 500) + connection / 10, 2),
            "timestamp": datetime.now(UTC).isoformat(),
            "channel": ("chip", "contactless", "online")[n % 3],
        }

    def _connection(self, index: int) -> None:
        conn: http.client.HTTPConnection | None = None
        target = ""
        for n in itertools.count():
            if self._stop.is_set():
                break
            if conn is None or target != self.url:
                if conn is not None:
                    conn.close()
                target = self.url
                parts = urlsplit(target)
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
            body = self._body(index, n)
            sent = time.monotonic()
            try:
                conn.request("POST", "/score", json.dumps(body), {"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                status, retry_after = response.status, response.getheader("Retry-After")
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = None
                status, retry_after = CONNECTION_FAILED, None
                time.sleep(0.05)  # a client retrying a dead service, not a busy loop
            self.answers.append(
                Answer(str(body["transaction_id"]), status, retry_after, sent, time.monotonic())
            )
        if conn is not None:
            conn.close()

    def ids(self, status: int) -> set[str]:
        return {a.transaction_id for a in self.answers if a.status == status}

    def statuses(self, start: float = 0.0, end: float = float("inf")) -> dict[int, int]:
        """How many answers of each status were sent within ``[start, end)``."""
        counts: dict[int, int] = {}
        for answer in self.answers:
            if start <= answer.sent < end:
                counts[answer.status] = counts.get(answer.status, 0) + 1
        return dict(sorted(counts.items()))

    def wait_for(self, count: int, status: int = 200, timeout: float = 60) -> None:
        """Until ``count`` answers of ``status`` came (raises after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while sum(1 for a in self.answers if a.status == status) < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"fewer than {count} answers {status} within {timeout:.0f} s: {self.statuses()}"
                )
            time.sleep(0.05)
