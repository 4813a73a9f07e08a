"""Prometheus and Grafana configuration, checked against what the service and the stream processes export.

The metric names come from real expositions, not a list: a ``bentoml serve`` scrape for the service (BentoML's
own request metrics, whose namespace depends on BentoML's serving configuration, and the scorer's metrics from
``services.scorer.metrics``, exercised once so every family has samples), and for the stream processes the
exposition their health server serves, made in-process from ``services.stream.health``'s collector over a
consumer with counts.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from deploy.local.servers import free_port
from model_store.settings import REPO_ROOT
from tests.deploy.stream_processes import HEALTH_PORT, STREAM_PROCESSES

BIN = Path(sys.executable).parent
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "dashboards" / "fraud-scorer.json"
PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "and",
    "or",
    "unless",
}

PROBE_SERVICE = textwrap.dedent(
    """
    import bentoml

    from services.scorer.metrics import scorer_metrics


    @bentoml.service(name="metrics_probe")
    class MetricsProbe:
        def __init__(self) -> None:
            self.metrics = scorer_metrics()
            self.metrics.set_model("fraud_scorer", "7")

        @bentoml.api
        def score(self, amount: float) -> float:
            self.metrics.feature_read_seconds.observe(0.0004)
            self.metrics.observe_missing([["amount_mean_7d"]])
            self.metrics.observe_scores([0.25])
            return 0.25
    """
)


@pytest.fixture(scope="module")
def exposition(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The /metrics text of a served service after one scored request."""
    workdir = tmp_path_factory.mktemp("metrics_probe")
    (workdir / "probe_service.py").write_text(PROBE_SERVICE)
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(workdir), str(REPO_ROOT)]),
        "BENTOML_HOME": str(workdir / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
    }
    log = (workdir / "serve.log").open("w")
    proc = subprocess.Popen(
        [
            str(BIN / "bentoml"),
            "serve",
            "probe_service:MetricsProbe",
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
        ],
        cwd=workdir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"bentoml serve did not get ready: {(workdir / 'serve.log').read_text()[-3000:]}")
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        assert httpx.post(f"{base}/score", json={"amount": 12.5}, timeout=10).status_code == 200
        assert httpx.post(f"{base}/score", json={"amount": "x"}, timeout=10).status_code >= 400
        yield httpx.get(f"{base}/metrics", timeout=10).text
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.fixture(scope="module")
def stream_exposition() -> str:
    """What /metrics of each stream process serves once its consumer has processed, failed and lagged."""
    from prometheus_client import CollectorRegistry, generate_latest
    from redis.asyncio import Redis

    from services.stream.consumer import ConsumerStats, Effects, Entry, GroupConsumer
    from services.stream.health import StreamCollector

    async def handler(entries: list[Entry]) -> Effects:
        raise AssertionError("the consumer does not run: only its counters are read")

    texts = []
    for process in STREAM_PROCESSES.values():
        # One registry per process, as each process has its own (the families share names across roles).
        registry = CollectorRegistry()
        collector = StreamCollector(process.role)
        consumer = GroupConsumer(
            Redis(), ["rtml:transactions:t"], process.role, handler, dead_letter_stream="rtml:dead-letter:t"
        )
        consumer.stats = ConsumerStats(
            batches=2, entries=10, dead_letters=1, errors=1, lag_events=5, lag_seconds=0.5, redis_ok=True
        )
        collector.consumer = consumer
        registry.register(collector)
        texts.append(generate_latest(registry).decode())
    return "".join(texts)


def exported(exposition: str) -> dict[str, set[str]]:
    """Sample names in an exposition, each with the label names its samples carry."""
    samples: dict[str, set[str]] = {}
    for line in exposition.splitlines():
        if line and not line.startswith("#"):
            name, _, rest = line.partition("{")
            name = name.split()[0]
            labels = set(re.findall(r'(\w+)="', rest.split("}")[0])) if rest else set()
            samples.setdefault(name, set()).update(labels)
    return samples


def referenced(expr: str) -> tuple[set[str], set[str]]:
    """The metric names and label names a PromQL expression refers to."""
    without_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    labels = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", "".join(re.findall(r"\{[^}]*\}", without_strings))))
    for grouping in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", without_strings):
        labels.update(name.strip() for name in grouping.split(",") if name.strip())
    bare = re.sub(r"\{[^}]*\}", " ", without_strings)
    bare = re.sub(r"\[[^\]]*\]", " ", bare)
    bare = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", " ", bare)
    bare = re.sub(r"(?<![\w:])\d[\d.]*(?:[eE][-+]?\d+)?", " ", bare)
    names = {
        match.group(1)
        for match in re.finditer(r"([A-Za-z_:][\w:]*)\s*(\()?", bare)
        if not match.group(2) and match.group(1) not in PROMQL_WORDS
    }
    return names, labels - {"le"}


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])  # rows have none
    ]


def test_promql_parsing_finds_metrics_and_labels() -> None:
    names, labels = referenced(
        'histogram_quantile(0.99, sum by (le) (rate(a_seconds_bucket{endpoint!~"/(metrics|x)"}[$__rate_interval])))'
        " / clamp_min(sum without (pod) (b_total), 1e-9)"
    )
    assert names == {"a_seconds_bucket", "b_total"}
    assert labels == {"endpoint", "pod"}


def test_dashboard_covers_what_operators_watch() -> None:
    titles = " | ".join(title.lower() for title, _ in dashboard_queries())
    for topic in (
        "request rate",
        "latency",
        "error",
        "feature read",
        "missing",
        "score distribution",
        "model version",
        "consumer lag (events)",
        "consumer lag (seconds)",
        "events per second",
        "dead letters",
        "processes up",
    ):
        assert topic in titles, topic


def test_stream_panels_sit_in_their_row_below_the_service_panels_without_overlapping() -> None:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    (row,) = [p for p in panels if p["type"] == "row"]
    assert row["title"] == "Stream processes" and not row["collapsed"]
    for panel in panels:
        stream = any("stream_" in target["expr"] for target in panel.get("targets", []))
        if panel is not row:
            assert (panel["gridPos"]["y"] > row["gridPos"]["y"]) == stream, panel["title"]
    cells = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_the_stream_metrics_are_exported_by_every_role(stream_exposition: str) -> None:
    samples = exported(stream_exposition)
    for name in (
        "stream_events_total",
        "stream_dead_letters_total",
        "stream_errors_total",
        "stream_batches_total",
        "stream_consumer_lag_events",
        "stream_consumer_lag_seconds",
        "stream_up",
    ):
        assert samples.get(name) == {"role"}, name
    roles = set(re.findall(r'^stream_up\{role="([^"]+)"\} 1\.0$', stream_exposition, re.MULTILINE))
    assert roles == {process.role for process in STREAM_PROCESSES.values()}


def test_every_dashboard_query_names_exported_metrics_and_labels(
    exposition: str, stream_exposition: str
) -> None:
    samples = exported(exposition)
    for name, labels in exported(stream_exposition).items():
        samples.setdefault(name, set()).update(labels)
    for title, expr in dashboard_queries():
        names, labels = referenced(expr)
        assert names, f"{title}: no metric in {expr}"
        for name in names:
            assert name in samples, f"{title}: {name} is not exported (have {sorted(samples)})"
            assert labels <= samples[name], f"{title}: {name} has no label {sorted(labels - samples[name])}"


def test_the_contract_metrics_are_exported(exposition: str) -> None:
    samples = exported(exposition)
    for name in (
        "online_feature_read_seconds_bucket",
        "online_features_missing_total",
        "fraud_score_bucket",
        "model_version_info",
        "bentoml_service_request_total",
        "bentoml_service_request_duration_seconds_bucket",
    ):
        assert name in samples, name
    assert {"model_name", "model_version"} <= samples["model_version_info"]


def test_prometheus_scrapes_the_service_container() -> None:
    config = yaml.safe_load((REPO_ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "fraud-scorer"]
    assert job["metrics_path"] == "/metrics"
    (target,) = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    assert host in compose["services"]
    assert any(str(p).endswith(f":{port}") for p in compose["services"][host]["ports"])


@pytest.mark.parametrize("name", sorted(STREAM_PROCESSES))
def test_prometheus_scrapes_each_stream_process_in_compose(name: str) -> None:
    """Every container of the service, on its health port, even when the processor runs one per partition."""
    config = yaml.safe_load((REPO_ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    service = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"][name]
    port = int(service["environment"].get("RTML_STREAM_HEALTH_PORT", HEALTH_PORT))
    jobs = [
        job
        for job in config["scrape_configs"]
        for sd in job.get("dns_sd_configs") or []
        if name in sd["names"] and sd["type"] == "A" and sd["port"] == port
    ]
    assert len(jobs) == 1, f"no single DNS-discovered scrape of {name}:{port}"
    (job,) = jobs
    assert job.get("metrics_path", "/metrics") == "/metrics"
    # Targets found by DNS are IP addresses: the service name stays on them as a label.
    assert {"source_labels": ["__meta_dns_name"], "target_label": "service"} in job["relabel_configs"]


def test_prometheus_discovers_no_name_compose_does_not_run() -> None:
    config = yaml.safe_load((REPO_ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    services = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"]
    names = {
        n for job in config["scrape_configs"] for sd in job.get("dns_sd_configs") or [] for n in sd["names"]
    }
    assert names == set(STREAM_PROCESSES) and names <= set(services)


def test_grafana_provisioning_points_at_prometheus_and_the_dashboard_folder() -> None:
    provisioning = REPO_ROOT / "deploy" / "grafana" / "provisioning"
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "dashboards.yml").read_text())["providers"]
    grafana = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"]["grafana"]
    mounts = dict(volume.split(":")[:2] for volume in grafana["volumes"])
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    dashboard = json.loads(DASHBOARD.read_text())
    variable = dashboard["templating"]["list"][0]
    assert variable["type"] == "datasource" and variable["query"] == source["type"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
