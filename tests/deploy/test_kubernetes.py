"""The Kubernetes manifests (deploy/k8s, deploy/ray/rayservice.yaml), checked offline.

``kubectl kustomize`` renders the base and the GPU overlay; every rendered object of a built-in
kind is validated against the Kubernetes OpenAPI schemas (``kubernetes-validate``, strict: unknown
fields are errors) for kubectl's own version. The Prometheus Operator and KubeRay objects have no
schema here: their pod templates are validated as ``PodTemplate`` objects and their contents are
compared with the files they are derived from. The rest checks what the deployment promises:
probes, drain, secrets, security settings, network egress.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement

from tests.support.settings_env import settings_from_env

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
RAY_SERVICE = ROOT / "deploy" / "ray" / "rayservice.yaml"
SERVE_CLUSTER = ROOT / "deploy" / "ray" / "serve-cluster.yaml"
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule"}
# The issue's floor for the first start: an empty cache downloads the model before warm-up.
MIN_STARTUP_S = 600
IMAGE_UID = 10001  # the Dockerfile's user


def kubectl_version() -> str:
    """kubectl's own version (x.y.0): the Kubernetes version the manifests are validated for."""
    out = subprocess.run(["kubectl", "version", "--client", "-o", "json"], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    minor = re.match(r"\d+", json.loads(out)["clientVersion"]["minor"])
    assert minor is not None
    return f"{json.loads(out)['clientVersion']['major']}.{minor.group()}.0"


@pytest.fixture(scope="module")
def k8s_version() -> str:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed (it renders the kustomizations)")
    return kubectl_version()


def kustomize(directory: Path) -> list[dict[str, Any]]:
    rendered = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True,
                              text=True, timeout=120, check=False)
    assert rendered.returncode == 0, rendered.stderr
    return [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]


@pytest.fixture(scope="module")
def base(k8s_version: str) -> list[dict[str, Any]]:
    return kustomize(K8S / "base")


@pytest.fixture(scope="module")
def gpu(k8s_version: str) -> list[dict[str, Any]]:
    return kustomize(K8S / "overlays" / "gpu")


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = (o for o in objects if o["kind"] == kind)
    return found


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (main,) = deployment["spec"]["template"]["spec"]["containers"]
    return main


def validate(obj: dict[str, Any], version: str) -> None:
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = "/".join(str(p) for p in exc.path)
        pytest.fail(f"{obj['kind']}/{obj['metadata'].get('name')}: {path}: {exc.message}")


@pytest.mark.parametrize("overlay", ["base", "gpu"])
def test_every_object_validates_against_the_kubernetes_schemas(
    overlay: str, request: pytest.FixtureRequest, k8s_version: str
) -> None:
    objects = request.getfixturevalue(overlay)
    kinds = {o["kind"] for o in objects}
    assert kinds == {"ServiceAccount", "ConfigMap", "Deployment", "Service", "PodDisruptionBudget",
                     "HorizontalPodAutoscaler", "NetworkPolicy", *CUSTOM_KINDS}
    for obj in objects:
        if obj["kind"] not in CUSTOM_KINDS:
            validate(obj, k8s_version)
    # The operator's objects: at least their shape and API group.
    for kind in CUSTOM_KINDS:
        assert one(objects, kind)["apiVersion"] == "monitoring.coreos.com/v1"


def test_configmap_holds_valid_settings_and_no_secret(base: list[dict[str, Any]]) -> None:
    data = one(base, "ConfigMap")["data"]
    settings = settings_from_env(data)
    assert "SAFEGEN_API_KEYS" not in data
    assert "SAFEGEN_API_KEYS_FILE" not in data
    assert settings.rate_limit_storage.startswith("redis://")  # one budget for all replicas
    deployment = one(base, "Deployment")
    main = container(deployment)
    config_map = one(base, "ConfigMap")["metadata"]["name"]
    assert main["envFrom"] == [{"configMapRef": {"name": config_map}}]
    env = {e["name"]: e["value"] for e in main["env"]}
    settings_from_env({k: v for k, v in env.items() if k.startswith("SAFEGEN_")})
    assert env["SAFEGEN_HOST"] == "0.0.0.0"


def test_api_keys_come_from_a_secret_file(base: list[dict[str, Any]]) -> None:
    deployment = one(base, "Deployment")
    main = container(deployment)
    env = {e["name"]: e for e in main["env"]}
    assert "SAFEGEN_API_KEYS" not in env
    keys_file = Path(env["SAFEGEN_API_KEYS_FILE"]["value"])
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    (mount,) = (m for m in main["volumeMounts"] if keys_file.parent == Path(m["mountPath"]))
    assert mount["readOnly"] is True
    secret = volumes[mount["name"]]["secret"]
    assert secret["secretName"] == "safegen-api-keys"
    assert secret.get("optional") is False
    assert secret["defaultMode"] & 0o007 == 0  # not world-readable


def test_probes_cover_download_warm_up_and_liveness(base: list[dict[str, Any]]) -> None:
    main = container(one(base, "Deployment"))
    port = main["ports"][0]
    assert (port["name"], port["containerPort"]) == ("http", 8000)
    startup, ready, live = main["startupProbe"], main["readinessProbe"], main["livenessProbe"]
    assert startup["httpGet"] == {"path": "/readyz", "port": "http"}
    assert ready["httpGet"] == {"path": "/readyz", "port": "http"}
    assert live["httpGet"] == {"path": "/healthz", "port": "http"}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= MIN_STARTUP_S


def test_termination_grace_covers_the_prestop_pause_and_the_drain(
    base: list[dict[str, Any]],
) -> None:
    deployment = one(base, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    pre_stop = container(deployment)["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"  # coreutils' sleep, present in the image (test_container.py)
    pause = float(pre_stop[1])
    assert pause >= 5  # endpoints controllers and load balancers need a few seconds
    grace = settings_from_env(one(base, "ConfigMap")["data"]).shutdown_grace_s
    # Worst case of a drain: requests, then generations with their uploads, then the classifier
    # queue, each up to SAFEGEN_SHUTDOWN_GRACE_S.
    assert pod["terminationGracePeriodSeconds"] >= pause + 3 * grace


def test_security_context_is_locked_down(base: list[dict[str, Any]]) -> None:
    deployment = one(base, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    main = container(deployment)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == IMAGE_UID
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert one(base, "ServiceAccount")["automountServiceAccountToken"] is False
    security = main["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security.get("privileged", False) is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    # With a read-only root: every place the service writes is a volume.
    writable = {m["mountPath"] for m in main["volumeMounts"] if not m.get("readOnly")}
    env = {e["name"]: e["value"] for e in main["env"]}
    for path in ("/tmp", env["HF_HOME"], env["XDG_CACHE_HOME"]):
        assert any(Path(path).is_relative_to(mount) for mount in writable), path
    assert all("emptyDir" in v or "secret" in v for v in pod["volumes"])


def test_resources_and_scaling(base: list[dict[str, Any]]) -> None:
    deployment = one(base, "Deployment")
    resources = container(deployment)["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert "memory" in resources["limits"]
    assert "replicas" not in deployment["spec"]  # the HPA owns the count
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    hpa = one(base, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    assert 1 < hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    pdb = one(base, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1


def test_service_pdb_and_monitor_select_the_pods(base: list[dict[str, Any]]) -> None:
    pod_labels = one(base, "Deployment")["spec"]["template"]["metadata"]["labels"]
    service = one(base, "Service")

    def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
        return bool(selector) and all(labels.get(k) == v for k, v in selector.items())

    assert selects(service["spec"]["selector"], pod_labels)
    assert selects(one(base, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"], pod_labels)
    assert selects(one(base, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"], pod_labels)
    (port,) = service["spec"]["ports"]
    assert (port["name"], port["targetPort"]) == ("http", "http")
    # alerts.yml watches up{job="safegen"}: the operator names the job after the Service.
    assert service["metadata"]["name"] == "safegen"
    monitor = one(base, "ServiceMonitor")["spec"]
    assert selects(monitor["selector"]["matchLabels"], service["metadata"]["labels"])
    (endpoint,) = monitor["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("http", "/metrics")
    assert endpoint["authorization"]["credentials"]["name"] == "safegen-metrics-key"


def test_network_policy_allows_dns_redis_and_https_only(base: list[dict[str, Any]]) -> None:
    policy = one(base, "NetworkPolicy")["spec"]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    (ingress,) = policy["ingress"]
    assert ingress["ports"] == [{"port": "http", "protocol": "TCP"}]
    allowed = {(p["port"], p["protocol"]) for rule in policy["egress"] for p in rule["ports"]}
    assert allowed == {(53, "UDP"), (53, "TCP"), (6379, "TCP"), (443, "TCP")}
    for rule in policy["egress"]:
        assert rule.get("to"), "an egress rule without destinations allows every address"
    https = next(r for r in policy["egress"] if r["ports"][0]["port"] == 443)
    blocked = {e for peer in https["to"] for e in peer["ipBlock"].get("except", [])}
    assert {"169.254.0.0/16", "10.0.0.0/8"} <= blocked  # metadata service, cluster networks


def test_prometheus_rule_is_alerts_yml(base: list[dict[str, Any]]) -> None:
    rule = one(base, "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]


def test_rendered_files_are_up_to_date() -> None:
    check = subprocess.run([sys.executable, str(K8S / "render.py"), "--check"],
                           capture_output=True, text=True, timeout=60, check=False)
    assert check.returncode == 0, check.stderr


def test_gpu_overlay_requests_a_gpu_and_runs_cuda(
    base: list[dict[str, Any]], gpu: list[dict[str, Any]]
) -> None:
    resources = container(one(gpu, "Deployment"))["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert resources["requests"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in container(one(base, "Deployment"))["resources"]["limits"]
    assert settings_from_env(one(gpu, "ConfigMap")["data"]).device == "cuda"
    image = container(one(gpu, "Deployment"))["image"]
    assert image != container(one(base, "Deployment"))["image"]
    assert "cuda" in image.rsplit(":", 1)[1]
    # What the overlay does not touch stays the base's (drain, security).
    for key in ("securityContext", "lifecycle", "startupProbe"):
        assert container(one(gpu, "Deployment"))[key] == container(one(base, "Deployment"))[key]


# --- KubeRay ------------------------------------------------------------------------------------


def ray_pod_templates(service: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    cluster = service["spec"]["rayClusterConfig"]
    yield "head", cluster["headGroupSpec"]["template"]
    for group in cluster["workerGroupSpecs"]:
        yield group["groupName"], group["template"]


@pytest.fixture(scope="module")
def ray_service() -> dict[str, Any]:
    return yaml.safe_load(RAY_SERVICE.read_text(encoding="utf-8"))


def test_ray_service_pod_templates_validate_and_are_locked_down(
    ray_service: dict[str, Any], k8s_version: str
) -> None:
    assert (ray_service["apiVersion"], ray_service["kind"]) == ("ray.io/v1", "RayService")
    groups = dict(ray_pod_templates(ray_service))
    assert set(groups) == {"head", "cpu", "gpu"}
    for group, template in groups.items():
        validate({"apiVersion": "v1", "kind": "PodTemplate",
                  "metadata": {"name": f"safegen-ray-{group}"}, "template": template}, k8s_version)
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        for main in pod["containers"]:
            assert main["securityContext"]["allowPrivilegeEscalation"] is False
            assert main["securityContext"]["capabilities"] == {"drop": ["ALL"]}
            assert "limits" in main["resources"]
    gpu_limits = groups["gpu"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpu_limits["nvidia.com/gpu"] == 1


def test_ray_service_serves_the_cluster_config_verbatim(ray_service: dict[str, Any]) -> None:
    assert ray_service["spec"]["serveConfigV2"] == SERVE_CLUSTER.read_text(encoding="utf-8")
    config = yaml.safe_load(ray_service["spec"]["serveConfigV2"])
    (app,) = config["applications"]
    settings_from_env({k: v for k, v in app["runtime_env"]["env_vars"].items()
                   if k.startswith("SAFEGEN_")})
    # rayVersion must be the Ray inside the image: one that the project's `ray` extra allows.
    ray_version = ray_service["spec"]["rayClusterConfig"]["rayVersion"]
    (ray,) = (r for r in map(Requirement, metadata.requires("safegen") or [])
              if r.name == "ray")
    assert ray_version in ray.specifier, (ray_version, str(ray))
