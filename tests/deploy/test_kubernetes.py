"""The Kubernetes kustomize base, validated offline against the Kubernetes 1.30 schemas (strict)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from model_store.settings import REPO_ROOT

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
    config = by_kind(resources, "ConfigMap", "rtml-config")["data"]
    assert config["RTML_REDIS_URL"] == "redis://redis:6379/0"
    assert {"configMapRef", "secretRef"} <= {key for source in container["envFrom"] for key in source}


def test_service_and_worker_share_rtml_home_on_a_read_write_many_claim(built: tuple[str, list[dict]]) -> None:
    """The drift report (a flow run in the worker) reads the profiles every service replica writes."""
    _, resources = built
    home = by_kind(resources, "ConfigMap", "rtml-config")["data"]["RTML_HOME"]
    for name in ("fraud-scorer", "prefect-worker"):
        pod = by_kind(resources, "Deployment", name)["spec"]["template"]["spec"]
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]}
        (container,) = pod["containers"]
        mounts = {m["mountPath"]: claims[m["name"]] for m in container["volumeMounts"]}
        assert mounts[home] == "rtml-home", name
    claim = by_kind(resources, "PersistentVolumeClaim", "rtml-home")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_pods_sharing_rtml_home_run_as_the_same_user(built: tuple[str, list[dict]]) -> None:
    _, resources = built
    contexts = [
        by_kind(resources, "Deployment", name)["spec"]["template"]["spec"]["securityContext"]
        for name in ("fraud-scorer", "prefect-worker")
    ]
    assert len({(c["runAsUser"], c["fsGroup"]) for c in contexts}) == 1
