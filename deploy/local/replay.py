"""The demo's traffic: a period of transactions sent to the scoring service as it would have lived it.

Real traffic spreads a customer's transactions over minutes or days; a replay compresses days into seconds.
So that every transaction is scored with the features of all the transactions before it (what the window
processor gives live traffic), the replay goes in waves: a wave holds no customer or merchant twice, and the
next wave waits until the window processor has taken every decision of this one. The wait is the freshness a
live transaction would see: from the decision's publication to its features being visible to the next.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

REQUEST_COLUMNS = ["transaction_id", "customer_id", "merchant_id", "amount", "timestamp", "channel"]
BATCH_LIMIT = 1000


def waves(
    transactions: pd.DataFrame, keys: Sequence[str] = ("customer_id", "merchant_id")
) -> Iterator[pd.DataFrame]:
    """Consecutive runs of time-ordered transactions in which no value of ``keys`` repeats."""
    ordered = transactions.sort_values("event_timestamp", kind="stable")
    columns = [ordered[k].to_numpy() for k in keys]
    start, seen = 0, [set() for _ in keys]
    for i in range(len(ordered)):
        if any(column[i] in s for column, s in zip(columns, seen, strict=True)):
            yield ordered.iloc[start:i]
            start, seen = i, [set() for _ in keys]
        for column, s in zip(columns, seen, strict=True):
            s.add(column[i])
    if start < len(ordered):
        yield ordered.iloc[start:]


def request_bodies(transactions: pd.DataFrame) -> list[dict[str, Any]]:
    """The transactions as ``POST /score`` bodies."""
    rows = transactions.assign(timestamp=transactions["event_timestamp"].map(pd.Timestamp.isoformat))
    return rows[REQUEST_COLUMNS].to_dict("records")


@dataclass
class Replay:
    """What a replay saw: every answer, latencies of the single requests, and the freshness of each wave."""

    answers: dict[str, dict[str, Any]] = field(default_factory=dict)
    single_ms: list[float] = field(default_factory=list)
    batch_ms: list[float] = field(default_factory=list)
    freshness_ms: list[float] = field(default_factory=list)
    waves: int = 0

    def summary(self) -> dict[str, Any]:
        def pct(values: list[float], q: float) -> float:
            return float(np.percentile(values, q)) if values else float("nan")

        return {
            "requests": len(self.answers),
            "waves": self.waves,
            "declined": sum(a["decision"] == "decline" for a in self.answers.values()),
            "p50_ms": pct(self.single_ms, 50),
            "p99_ms": pct(self.single_ms, 99),
            "batch_ms": pct(self.batch_ms, 50),
            "freshness_p50_ms": pct(self.freshness_ms, 50),
            "freshness_p99_ms": pct(self.freshness_ms, 99),
        }


def replay(
    client: Any,
    transactions: pd.DataFrame,
    caught_up: Callable[[], bool],
    one_by_one: int = 0,
    progress: Callable[[int], None] | None = None,
    timeout: float = 30.0,
) -> Replay:
    """Score ``transactions`` wave by wave with an HTTP client of the service (``httpx.Client``).

    ``caught_up()`` says whether the window processor has taken every decision published so far; the first
    ``one_by_one`` transactions go to ``/score`` one request at a time (their latencies are measured), the rest
    to ``/score_batch``.
    """
    out = Replay()
    sent = 0
    for wave in waves(transactions):
        bodies = request_bodies(wave)
        singles, bodies = bodies[: max(0, one_by_one - sent)], bodies[max(0, one_by_one - sent) :]
        for body in singles:
            started = time.perf_counter()
            response = client.post("/score", json=body)
            out.single_ms.append((time.perf_counter() - started) * 1000)
            response.raise_for_status()
            out.answers[body["transaction_id"]] = response.json()
        for start in range(0, len(bodies), BATCH_LIMIT):
            chunk = bodies[start : start + BATCH_LIMIT]
            started = time.perf_counter()
            response = client.post("/score_batch", json={"transactions": chunk})
            out.batch_ms.append((time.perf_counter() - started) * 1000)
            response.raise_for_status()
            for body, answer in zip(chunk, response.json()["results"], strict=True):
                out.answers[body["transaction_id"]] = answer
        published = time.perf_counter()
        deadline = published + timeout
        while not caught_up():
            if time.perf_counter() > deadline:
                raise TimeoutError(
                    f"the window processor did not take a wave's decisions within {timeout:.0f} s"
                )
            time.sleep(0.001)
        out.freshness_ms.append((time.perf_counter() - published) * 1000)
        out.waves += 1
        sent += len(wave)
        if progress is not None:
            progress(len(wave))
    return out


def group_caught_up(client: Any, stream: str, group: str) -> Callable[[], bool]:
    """Whether ``group`` has read and acknowledged everything in ``stream`` (a redis-py client)."""

    def check() -> bool:
        last = client.xinfo_stream(stream)["last-generated-id"]
        for info in client.xinfo_groups(stream):
            if info["name"].decode() == group:
                return info["last-delivered-id"] == last and info["pending"] == 0
        return False

    return check


def wait_caught_up(client: Any, stream: str, groups: Sequence[str], timeout: float = 60) -> None:
    """Wait until every one of ``groups`` has read and acknowledged everything in ``stream``."""
    checks = [group_caught_up(client, stream, g) for g in groups]
    deadline = time.monotonic() + timeout
    while not all(check() for check in checks):
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"consumer groups {', '.join(groups)} did not catch up with {stream} within {timeout:.0f} s:"
                " see their logs"
            )
        time.sleep(0.1)
