"""Health and Prometheus metrics of a stream process, over HTTP: ``/livez``, ``/readyz``, ``/metrics``.

Metrics are read from the consumer's counters when Prometheus scrapes (no per-event cost):
``stream_events_total{role}``, ``stream_dead_letters_total{role}``, ``stream_errors_total{role}``,
``stream_batches_total{role}``, ``stream_consumer_lag_events{role}`` (entries the group has not read yet,
from ``XINFO GROUPS``), ``stream_consumer_lag_seconds{role}`` (age of the newest entry processed: Redis stamps
each entry with its clock when it is published) and ``stream_up{role}`` (1 while Redis answers).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from services.stream.consumer import GroupConsumer

logger = logging.getLogger(__name__)

# A loop that has not come round for this long is stuck (a read blocks for at most stream_block_ms).
LIVENESS_SECONDS = 60.0


class StreamCollector:
    """Prometheus collector over a consumer's counters, labelled with the process's role."""

    def __init__(self, role: str = "") -> None:
        self.role = role
        self.consumer: GroupConsumer | None = None

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        consumer = self.consumer
        if consumer is None:
            return
        stats = consumer.stats
        for name, value, text in (
            ("stream_events", stats.entries, "Stream entries processed and acknowledged."),
            ("stream_dead_letters", stats.dead_letters, "Entries sent to the dead-letter stream."),
            ("stream_errors", stats.errors, "Failed reads or commits (Redis unreachable, lease lost)."),
            ("stream_batches", stats.batches, "Batches committed."),
        ):
            family = CounterMetricFamily(name, text, labels=["role"])
            family.add_metric([self.role], value)
            yield family
        lag = GaugeMetricFamily(
            "stream_consumer_lag_events", "Entries the group has not read yet.", labels=["role"]
        )
        lag.add_metric([self.role], stats.lag_events)
        yield lag
        age = GaugeMetricFamily(
            "stream_consumer_lag_seconds",
            "Age of the newest entry processed when it was processed.",
            labels=["role"],
        )
        age.add_metric([self.role], stats.lag_seconds)
        yield age
        up = GaugeMetricFamily("stream_up", "1 while Redis answers the consumer.", labels=["role"])
        up.add_metric([self.role], 1.0 if stats.redis_ok else 0.0)
        yield up


def stream_metrics(role: str = "") -> StreamCollector:
    """The process's collector, registered once with prometheus_client's default registry; its role (the
    metrics' label) may be named later, when the process knows it."""
    from prometheus_client import REGISTRY

    collector = StreamCollector(role)
    REGISTRY.register(collector)
    return collector


class HealthServer:
    """``/livez`` (the loop comes round), ``/readyz`` (it holds its partition and Redis answers), ``/metrics``."""

    def __init__(self, port: int, collector: StreamCollector, host: str = "0.0.0.0") -> None:
        self.port = port
        self.host = host
        self.collector = collector
        self._server: ThreadingHTTPServer | None = None

    def watch(self, consumer: GroupConsumer) -> None:
        self.collector.consumer = consumer

    def live(self) -> bool:
        consumer = self.collector.consumer
        return consumer is None or time.monotonic() - consumer.stats.last_loop < LIVENESS_SECONDS

    def ready(self) -> bool:
        consumer = self.collector.consumer
        return consumer is not None and consumer.stats.redis_ok and not consumer.stopping

    def start(self) -> None:
        if not self.port:
            return
        health = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

                if self.path == "/metrics":
                    self._answer(200, generate_latest(), CONTENT_TYPE_LATEST)
                elif self.path == "/livez":
                    ok = health.live()
                    self._answer(200 if ok else 503, b"ok" if ok else b"stuck")
                elif self.path == "/readyz":
                    ok = health.ready()
                    self._answer(200 if ok else 503, b"ok" if ok else b"not ready")
                else:
                    self._answer(404, b"not found")

            def _answer(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:  # probes every few seconds: not worth a log line each
                return

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        threading.Thread(target=self._server.serve_forever, name="health", daemon=True).start()
        logger.info("health and metrics on http://%s:%d (/livez, /readyz, /metrics)", self.host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
