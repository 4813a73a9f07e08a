"""The demo's rollout check: probe decisions while the registry's champion moves, and what they show.

A thread sends one ``/score`` request every ``interval`` to the running service, from a card and a merchant
the data never uses (so no real card's velocity moves). Every probe is a real decision, recorded in the stream,
the prediction log and the landing zone like any other; its answer names the version that decided. From the
time an alias moved (the registry's ``champion_since`` tag, or the drill's own clock) to the first probe the
new version answered is what a rollout costs; the probes that did not get a 200 are its errors.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from model_store.settings import Settings

# Ids no generated entity has (the generator numbers them from 1): probes are their only transactions.
PROBE_CUSTOMER = 2**62 - 1
PROBE_MERCHANT = 2**62 - 1
PROBE_PREFIX = "rollout-probe-"


@dataclass(frozen=True)
class Answer:
    at: float  # wall-clock seconds, comparable with the registry's tags
    status: int
    version: str | None


@dataclass(frozen=True)
class Move:
    """One alias move as traffic saw it."""

    from_version: str
    to_version: str
    why: str
    seconds: float | None  # alias moved -> first probe decided by the new version (None: never, in the wait)
    errors: int  # probes without a 200 from the move to that first decision

    def as_dict(self) -> dict[str, Any]:
        return {
            "from": self.from_version,
            "to": self.to_version,
            "why": self.why,
            "seconds": self.seconds,
            "errors": self.errors,
        }


class Probes:
    """Probe decisions sent from a thread until the block ends (see the module docstring)."""

    def __init__(self, url: str, interval: float = 0.05) -> None:
        self.url = url
        self.interval = interval
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._send, name="rollout-probes", daemon=True)

    def __enter__(self) -> Probes:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop sending; every probe sent has its answer recorded."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def _send(self) -> None:
        with httpx.Client(timeout=5) as client:
            n = 0
            while not self._stop.wait(self.interval):
                n += 1
                body = {
                    "transaction_id": f"{PROBE_PREFIX}{n}",
                    "customer_id": PROBE_CUSTOMER,
                    "merchant_id": PROBE_MERCHANT,
                    "amount": 1.0,
                    "timestamp": datetime.now(UTC).isoformat(),
                    "channel": "online",
                }
                try:
                    answer = client.post(f"{self.url}/score", json=body)
                    version = answer.json().get("model_version") if answer.status_code == 200 else None
                    self.answers.append(Answer(time.time(), answer.status_code, version))
                except httpx.HTTPError:
                    self.answers.append(Answer(time.time(), 0, None))

    @property
    def sent(self) -> int:
        return len(self.answers)

    @property
    def failed(self) -> int:
        return sum(1 for a in self.answers if a.status != 200)

    def watch(
        self, from_version: str, to_version: str, moved_at: float, why: str, timeout: float = 60
    ) -> Move:
        """Wait for the first probe ``to_version`` decided after ``moved_at``; the move as traffic saw it."""
        deadline = time.monotonic() + timeout
        while (
            first := next((a for a in self.answers if a.at >= moved_at and a.version == to_version), None)
        ) is None and time.monotonic() < deadline:
            time.sleep(self.interval)
        until = first.at if first is not None else time.time()
        errors = sum(1 for a in self.answers if moved_at <= a.at <= until and a.status != 200)
        seconds = first.at - moved_at if first is not None else None
        return Move(from_version, to_version, why, seconds, errors)


def moved_at(version: str, settings: Settings) -> float:
    """When ``version`` became champion (its ``champion_since`` tag), in wall-clock seconds."""
    from model_store.registry import mlflow_client

    tags = mlflow_client(settings).get_model_version(settings.model_name, version).tags
    return datetime.fromisoformat(tags["champion_since"]).timestamp()


def follow_the_gate(probes: Probes, served: str, settings: Settings) -> list[Move]:
    """The service ends on the champion the gate chose, without a restart: the gate's own promotion as traffic
    saw it, or, when the gate kept the champion, a drill that promotes the challenger and rolls back to it."""
    from model_store import registry

    current = registry.aliases(settings)
    champion, challenger = current[registry.CHAMPION], current.get(registry.CHALLENGER)
    if champion != served:
        return [probes.watch(served, champion, moved_at(champion, settings), "promoted by the gate")]
    if challenger is None:
        return []
    started = time.time()
    registry.promote(challenger, "rollout drill: the gate kept the champion", settings)
    there = probes.watch(champion, challenger, started, "drill: challenger promoted by hand")
    started = time.time()
    registry.rollback(to_version=champion, settings=settings)
    back = probes.watch(challenger, champion, started, "drill: rolled back to the gate's champion")
    registry.challenge(challenger, settings)  # as the gate left it: the rejected version keeps challenging
    return [there, back]
