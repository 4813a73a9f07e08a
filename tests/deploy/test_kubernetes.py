"""The Kubernetes kustomize base, validated offline against the Kubernetes 1.30 schemas (strict)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from model_store.settings import REPO_ROOT
from tests.deploy.stream_processes import HEALTH_PORT, STREAM_PROCESSES, duration_seconds

BIN = Path(sys.executable).parent
BASE = REPO_ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30"


def kustomize_build() -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is needed for `kubectl kustomize` (https://kubernetes.io/docs/tasks/tools/)")
    done = subprocess.run([kubectl, "kustomize", str(BASE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def kubernetes_validate(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    # Options must come before file names.
    return subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, "--quiet", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def built() -> tuple[str, list[dict]]:
    text = kustomize_build()
    return text, [doc for doc in yaml.safe_load_all(text) if doc]


def by_kind(resources: list[dict], kind: str, name: str) -> dict:
    (found,) = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    return found


def claim_mounts(pod: dict) -> dict[str, str]:
    """Mount path -> claim name, for every container of a pod spec."""
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in pod.get("volumes") or []
        if "persistentVolumeClaim" in v
    }
    return {
        m["mountPath"]: claims[m["name"]]
        for container in pod["containers"]
        for m in container.get("volumeMounts") or []
        if m["name"] in claims
    }


def mounting_rtml_home(resources: list[dict]) -> set[str]:
    return {
        r["metadata"]["name"]
        for r in resources
        if r["kind"] in ("Deployment", "StatefulSet")
        and "rtml-home" in claim_mounts(r["spec"]["template"]["spec"]).values()
    }


def test_kustomize_build_passes_strict_schema_validation(built: tuple[str, list[dict]]) -> None:
    text, resources = built
    done = kubernetes_validate("-", stdin=text)
    assert done.returncode == 0, done.stdout + done.stderr
    kinds = {(r["kind"], r["metadata"]["name"]) for r in resources}
    assert {
        ("Deployment", "fraud-scorer"),
        ("Service", "fraud-scorer"),
        ("HorizontalPodAutoscaler", "fraud-scorer"),
        ("StatefulSet", "redis"),
        ("Service", "redis"),
        ("Deployment", "prefect-worker"),
        *(("Deployment", name) for name in STREAM_PROCESSES),
        *(("Service", name) for name in STREAM_PROCESSES),
    } <= kinds
    assert {r["metadata"].get("namespace") for r in resources if r["kind"] != "Namespace"} == {"realtime-ml"}


@pytest.mark.parametrize(
    "path", sorted(p.name for p in BASE.glob("*.yaml") if p.name != "kustomization.yaml")
)
def test_each_manifest_passes_strict_schema_validation(path: str) -> None:
    done = kubernetes_validate(str(BASE / path))
    assert done.returncode == 0, done.stdout + done.stderr


def test_strict_validation_rejects_an_unknown_field(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        (BASE / "fraud-scorer.yaml").read_text().replace("readinessProbe:", "readinesProbe:", 1)
    )
    assert kubernetes_validate(str(broken)).returncode != 0


def test_service_probes_its_health_endpoints_and_requests_resources(built: tuple[str, list[dict]]) -> None:
    _, resources = built
    deployment = by_kind(resources, "Deployment", "fraud-scorer")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    port_names = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port_names == {"http": 3000}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert container["image"].startswith("realtime-ml/fraud-scorer:")
    for kind, name in (
        ("Deployment", "fraud-scorer"),
        ("Deployment", "prefect-worker"),
        ("StatefulSet", "redis"),
        *(("Deployment", name) for name in STREAM_PROCESSES),
    ):
        for c in by_kind(resources, kind, name)["spec"]["template"]["spec"]["containers"]:
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]), f"{name}/{c['name']}"


def test_service_and_autoscaler_point_at_the_deployment(built: tuple[str, list[dict]]) -> None:
    _, resources = built
    deployment = by_kind(resources, "Deployment", "fraud-scorer")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = by_kind(resources, "Service", "fraud-scorer")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert service["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    hpa = by_kind(resources, "HorizontalPodAutoscaler", "fraud-scorer")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "fraud-scorer")
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    redis_service = by_kind(resources, "Service", "redis")
    redis_pods = by_kind(resources, "StatefulSet", "redis")["spec"]["template"]["metadata"]["labels"]
    assert redis_service["spec"]["selector"].items() <= redis_pods.items()


def test_worker_serves_the_pool_prefect_yaml_deploys_to_and_finds_the_stores(
    built: tuple[str, list[dict]],
) -> None:
    _, resources = built
    (container,) = by_kind(resources, "Deployment", "prefect-worker")["spec"]["template"]["spec"][
        "containers"
    ]
    pools = {
        d["work_pool"]["name"]
        for d in yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())["deployments"]
    }
    assert {container["args"][container["args"].index("--pool") + 1]} == pools
    assert {"configMapRef", "secretRef"} <= {key for source in container["envFrom"] for key in source}


def test_only_the_pods_that_write_files_share_rtml_home_on_a_read_write_many_claim(
    built: tuple[str, list[dict]],
) -> None:
    """Flow runs read what the traffic log and the landing writer write; the service writes only to Redis."""
    _, resources = built
    home = by_kind(resources, "ConfigMap", "rtml-config")["data"]["RTML_HOME"]
    writers = {name for name, process in STREAM_PROCESSES.items() if process.writes_files}
    assert mounting_rtml_home(resources) == {"prefect-worker"} | writers
    for name in {"prefect-worker"} | writers:
        mounts = claim_mounts(by_kind(resources, "Deployment", name)["spec"]["template"]["spec"])
        assert mounts[home] == "rtml-home", name
    claim = by_kind(resources, "PersistentVolumeClaim", "rtml-home")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_pods_sharing_rtml_home_run_as_the_same_user(built: tuple[str, list[dict]]) -> None:
    _, resources = built
    contexts = [
        by_kind(resources, "Deployment", name)["spec"]["template"]["spec"]["securityContext"]
        for name in mounting_rtml_home(resources)
    ]
    assert len(contexts) > 1
    assert len({(c["runAsUser"], c["fsGroup"]) for c in contexts}) == 1


@pytest.mark.parametrize("name", sorted(STREAM_PROCESSES))
def test_stream_process_deployment_probes_its_health_port_and_stops_gracefully(
    built: tuple[str, list[dict]], name: str
) -> None:
    _, resources = built
    process = STREAM_PROCESSES[name]
    deployment = by_kind(resources, "Deployment", name)
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == process.command
    assert container["image"].startswith("realtime-ml/worker:")
    env = {e["name"]: e.get("value") for e in container.get("env") or []}
    port = int(env.get("RTML_STREAM_HEALTH_PORT", HEALTH_PORT))
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"health": port}
    assert container["startupProbe"]["httpGet"] == {"path": "/livez", "port": "health"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    # The same settings as every other pod, and no setting of ours hard-coded that the ConfigMap holds.
    sources = [next(iter(source.items())) for source in container["envFrom"]]
    assert sorted((kind, ref["name"]) for kind, ref in sources) == [
        ("configMapRef", "rtml-config"),
        ("secretRef", "rtml-secrets"),
    ]
    assert not set(env) & set(by_kind(resources, "ConfigMap", "rtml-config")["data"]), name
    assert "memory" in container["resources"]["limits"]
    # SIGTERM commits the batch in hand (and writes what a buffering process holds): as long as compose gives.
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    grace = pod["terminationGracePeriodSeconds"]
    assert grace == duration_seconds(compose["services"][name]["stop_grace_period"]) and grace > 10
    # Optional processes are off until scaled up.
    if process.optional:
        assert deployment["spec"]["replicas"] == 0
    else:
        assert deployment["spec"]["replicas"] >= 1
    assert deployment["metadata"]["labels"]["app.kubernetes.io/part-of"] == "realtime-ml"


@pytest.mark.parametrize("name", sorted(STREAM_PROCESSES))
def test_prometheus_scrapes_every_replica_of_each_stream_process(
    built: tuple[str, list[dict]], name: str
) -> None:
    """As for fraud-scorer: a Service with prometheus.io annotations; headless, so each pod is a target."""
    _, resources = built
    pod_template = by_kind(resources, "Deployment", name)["spec"]["template"]
    (container,) = pod_template["spec"]["containers"]
    health = {p["name"]: p["containerPort"] for p in container["ports"]}["health"]
    service = by_kind(resources, "Service", name)
    assert service["spec"]["selector"].items() <= pod_template["metadata"]["labels"].items()
    assert service["spec"]["clusterIP"] == "None"
    annotations = service["metadata"]["annotations"]
    scraper = by_kind(resources, "Service", "fraud-scorer")["metadata"]["annotations"]
    assert {k for k in annotations if k.startswith("prometheus.io/")} == {
        k for k in scraper if k.startswith("prometheus.io/")
    }
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert annotations["prometheus.io/port"] == str(health)
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "health" and port["port"] == health


def test_the_documented_scaling_overlay_keeps_replicas_and_partitions_equal(tmp_path: Path) -> None:
    """The overlay docs/deployment.md shows, built against this base."""
    docs = (REPO_ROOT / "docs" / "deployment.md").read_text()
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", docs, re.DOTALL) if "name: stream-processor" in b]
    overlay = yaml.safe_load(block)
    assert overlay["resources"] == ["../../deploy/k8s"]
    overlay["resources"] = [os.path.relpath(BASE, tmp_path)]
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(overlay))
    kubectl = shutil.which("kubectl") or pytest.fail("kubectl is needed for `kubectl kustomize`")
    done = subprocess.run([kubectl, "kustomize", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    deployment = by_kind([d for d in yaml.safe_load_all(done.stdout) if d], "Deployment", "stream-processor")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert deployment["spec"]["replicas"] == int(env["RTML_STREAM_PARTITIONS"]) > 1


def test_processor_replicas_match_its_partitions_and_old_and_new_pods_never_run_together(
    built: tuple[str, list[dict]],
) -> None:
    """Each pod leases one partition; a pod beyond the count waits as a spare and never gets ready, and pods
    with different partition counts would both write the entities their partitions share."""
    _, resources = built
    deployment = by_kind(resources, "Deployment", "stream-processor")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert deployment["spec"]["replicas"] == int(env["RTML_STREAM_PARTITIONS"])
    # The overlay patch the manifest's comment shows replaces env/0: keep the partitions first.
    assert container["env"][0]["name"] == "RTML_STREAM_PARTITIONS"
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}


@pytest.mark.parametrize("name", sorted(n for n, p in STREAM_PROCESSES.items() if p.writes_files))
def test_stream_writers_run_one_pod_at_a_time(built: tuple[str, list[dict]], name: str) -> None:
    deployment = by_kind(resources=built[1], kind="Deployment", name=name)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}


# What each workload writes (mount path -> volume kind): the root filesystem is read-only, so this is all of it.
WORKER_SCRATCH = {"/tmp": "emptyDir", "/home/rtml": "emptyDir"}
WRITABLE = {
    "fraud-scorer": {"/tmp": "emptyDir", "/var/lib/bentoml": "emptyDir"},
    "redis": {"/data": "persistentVolumeClaim"},
    "prefect-worker": {**WORKER_SCRATCH, "/var/lib/rtml": "persistentVolumeClaim"},
    **{
        name: {
            **WORKER_SCRATCH,
            **({"/var/lib/rtml": "persistentVolumeClaim"} if process.writes_files else {}),
        }
        for name, process in STREAM_PROCESSES.items()
    },
}
# Our workloads that use Redis (all of them but Redis), and the label a Kubernetes work pool's flow runs get.
REDIS_CLIENTS = {"fraud-scorer", "prefect-worker", *STREAM_PROCESSES}


def workloads(resources: list[dict]) -> dict[str, dict]:
    return {r["metadata"]["name"]: r for r in resources if r["kind"] in ("Deployment", "StatefulSet")}


def writable_mounts(workload: dict) -> dict[str, str]:
    """Mount path -> volume kind (emptyDir, persistentVolumeClaim), claim templates included."""
    pod = workload["spec"]["template"]["spec"]
    kinds = {v["name"]: next(k for k in v if k != "name") for v in pod.get("volumes") or []}
    kinds.update(
        {
            t["metadata"]["name"]: "persistentVolumeClaim"
            for t in workload["spec"].get("volumeClaimTemplates", [])
        }
    )
    return {
        m["mountPath"]: kinds[m["name"]]
        for c in pod["containers"]
        for m in c.get("volumeMounts") or []
        if not m.get("readOnly")
    }


def test_every_workload_runs_hardened_and_writes_only_its_volumes(built: tuple[str, list[dict]]) -> None:
    """Non-root with a high uid, read-only root filesystem, no privilege escalation, no capabilities, the
    runtime's default seccomp profile, no service account token; writable: the table above, exactly."""
    from tests.deploy.test_compose import image_user

    _, resources = built
    found = workloads(resources)
    assert set(found) == set(WRITABLE)
    ours = {
        "realtime-ml/worker": image_user("worker.Dockerfile")[1],
        "realtime-ml/fraud-scorer": image_user("service.Dockerfile")[1],
    }
    for name, workload in found.items():
        pod = workload["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False, name
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] >= 10000, name
        assert context["runAsGroup"] == context["fsGroup"] == context["runAsUser"], name
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in pod["containers"]:
            assert container["securityContext"] == {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
            }, f"{name}/{container['name']}"
            image = container["image"].split(":")[0]
            if image in ours:  # the uid the image was built with
                assert f"{context['runAsUser']}:{context['runAsGroup']}" == ours[image], name
        assert writable_mounts(workload) == WRITABLE[name], name
        for volume in pod.get("volumes") or []:
            if "emptyDir" in volume:
                assert volume["emptyDir"].get("sizeLimit"), (
                    f"{name}: emptyDir {volume['name']} has no size limit"
                )


def test_redis_requires_the_secrets_password_and_every_client_sends_it(built: tuple[str, list[dict]]) -> None:
    _, resources = built
    found = workloads(resources)
    secret = {"secretKeyRef": {"name": "rtml-secrets", "key": "REDIS_PASSWORD"}}
    (redis,) = found["redis"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in redis["env"]}
    assert env["REDIS_PASSWORD"]["valueFrom"] == env["REDISCLI_AUTH"]["valueFrom"] == secret
    assert "requirepass $REDIS_PASSWORD" in redis["command"][-1]
    assert "REDIS_PASSWORD" not in " ".join(redis.get("args") or [])
    assert "grep -q PONG" in " ".join(redis["readinessProbe"]["exec"]["command"])
    assert "RTML_REDIS_URL" not in by_kind(resources, "ConfigMap", "rtml-config")["data"]
    for name in REDIS_CLIENTS:
        (container,) = found[name]["spec"]["template"]["spec"]["containers"]
        names = [e["name"] for e in container["env"]]
        entries = {e["name"]: e for e in container["env"]}
        # Kubernetes expands $(VAR) only from variables defined before: the password first.
        assert names.index("REDIS_PASSWORD") < names.index("RTML_REDIS_URL"), name
        assert entries["REDIS_PASSWORD"]["valueFrom"] == secret, name
        assert entries["RTML_REDIS_URL"]["value"] == "redis://:$(REDIS_PASSWORD)@redis:6379/0", name


def policies(resources: list[dict]) -> dict[str, dict]:
    return {r["metadata"]["name"]: r["spec"] for r in resources if r["kind"] == "NetworkPolicy"}


def pod_labels(resources: list[dict]) -> dict[str, dict[str, str]]:
    return {name: w["spec"]["template"]["metadata"]["labels"] for name, w in workloads(resources).items()}


def selects(selector: dict, labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels, matchExpressions with In) against a pod's labels."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        assert expression["operator"] == "In", expression
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def test_ingress_is_denied_except_the_scorers_port_redis_for_our_pods_and_prometheus(
    built: tuple[str, list[dict]],
) -> None:
    _, resources = built
    found = policies(resources)
    labels = pod_labels(resources)
    assert found["default-deny-ingress"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    for name, spec in found.items():
        assert spec["policyTypes"] == ["Ingress"], name
    # Only the scorer takes traffic from any source (outside the namespace included), on its HTTP port only.
    open_to_all = {
        pod
        for spec in found.values()
        for rule in spec.get("ingress") or []
        if not rule.get("from")
        for pod, pod_label in labels.items()
        if selects(spec["podSelector"], pod_label)
    }
    assert open_to_all == {"fraud-scorer"}
    (rule,) = found["fraud-scorer-http"]["ingress"]
    (container,) = workloads(resources)["fraud-scorer"]["spec"]["template"]["spec"]["containers"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert {p["name"] for p in container["ports"]} == {"http"}
    # Redis: from our components only, on its port.
    redis = found["redis-clients"]
    assert {pod for pod, pod_label in labels.items() if selects(redis["podSelector"], pod_label)} == {"redis"}
    (rule,) = redis["ingress"]
    (peer,) = rule["from"]
    assert set(peer) == {"podSelector"}, "a podSelector alone: pods of this namespace only"
    allowed = {pod for pod, pod_label in labels.items() if selects(peer["podSelector"], pod_label)}
    assert allowed == REDIS_CLIENTS
    assert rule["ports"] == [{"port": "redis", "protocol": "TCP"}]
    # Prometheus, from any namespace, only to the stream processes' health port.
    scrape = found["stream-metrics-from-prometheus"]
    scraped = {pod for pod, pod_label in labels.items() if selects(scrape["podSelector"], pod_label)}
    assert scraped == set(STREAM_PROCESSES)
    (rule,) = scrape["ingress"]
    assert rule["from"] == [
        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}
    ]
    assert rule["ports"] == [{"port": "health", "protocol": "TCP"}]
    assert set(found) == {
        "default-deny-ingress",
        "fraud-scorer-http",
        "redis-clients",
        "stream-metrics-from-prometheus",
    }


def test_the_documented_postgres_egress_policy_validates_and_selects_the_postgres_clients(
    built: tuple[str, list[dict]], tmp_path: Path
) -> None:
    """The egress policy docs/deployment.md gives for a PostgreSQL outside the cluster."""
    _, resources = built
    docs = (REPO_ROOT / "docs" / "deployment.md").read_text()
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", docs, re.DOTALL) if "kind: NetworkPolicy" in b]
    path = tmp_path / "postgres-egress.yaml"
    path.write_text(block)
    done = kubernetes_validate(str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    documents = [d for d in yaml.safe_load_all(block) if d]
    (policy,) = [d for d in documents if d["metadata"]["name"] == "postgres-egress"]
    labels = pod_labels(resources)
    selected = {pod for pod, pod_label in labels.items() if selects(policy["spec"]["podSelector"], pod_label)}
    # The registry (Feast SQL registry) and MLflow's database: the pods whose settings name PostgreSQL.
    assert selected == {
        "fraud-scorer",
        "prefect-worker",
        "stream-processor",
        "stream-scorer",
        "stream-shadow",
    }
    ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule.get("ports", [])}
    assert 5432 in ports and 53 in ports
