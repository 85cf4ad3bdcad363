"""deploy/: schema-valid Kubernetes objects that agree with the server and the image.

kubernetes-validate checks the core objects against the Kubernetes OpenAPI schemas
(strict: unknown fields fail). KServe's CRDs are not in those schemas, so their
structure is checked here and their containers are validated as core v1 Containers.
"""

from __future__ import annotations

import re

import kubernetes_validate  # the dev extra: both ship their own schemas / rules
import pytest
from yamllint import config as yamllint_config
from yamllint import linter

from server.config import ServerConfig
from tests.conftest import REPO_ROOT
from tests.deploy.manifests import (DEPLOY, K8S, K8S_MIN_VERSION, KSERVE, MONITORING, documents,
                                    env_of, kustomize_resources, one)


YAML_FILES = sorted(p for p in DEPLOY.rglob("*.y*ml") if p.name != ".yamllint.yaml")
OVERLAYS = {"cpu": K8S, "gpu": K8S / "gpu"}
K8S_VERSIONS = sorted({K8S_MIN_VERSION, kubernetes_validate.latest_version()})


def validate(resource: dict) -> None:
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"Kubernetes {version}: {resource['kind']} "
                        f"{resource['metadata'].get('name')}: {exc.message} at "
                        f"{'/'.join(map(str, exc.path))}")


def dockerfile_instruction(name: str) -> list[str]:
    text = (REPO_ROOT / "Dockerfile").read_text()
    return re.findall(rf"^{name}\s+(.+)$", text, flags=re.MULTILINE)


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yamllint_clean(path):
    config = yamllint_config.YamlLintConfig(file=str(DEPLOY / ".yamllint.yaml"))
    problems = list(linter.run(path.read_text(), config, str(path)))
    assert not problems, "\n".join(f"{path}:{p.line}:{p.column} {p.message} ({p.rule})"
                                   for p in problems)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_objects_are_schema_valid(overlay):
    resources = kustomize_resources(OVERLAYS[overlay])
    kinds = sorted(r["kind"] for r in resources)
    assert kinds == ["Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget",
                     "Service", "Service"]
    for resource in resources:
        validate(resource)


def test_schema_validation_catches_mistakes():
    deployment = one(kustomize_resources(K8S), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"][
        "port"] = "grpc"  # gRPC probes need a number, not a port name
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_MIN_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_shutdown_timing_fits_the_server_drain(overlay):
    pod = one(kustomize_resources(OVERLAYS[overlay]), "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    drain_s = float(env_of(container).get("SERVE_DRAIN_TIMEOUT_S",
                                          ServerConfig.drain_timeout_s))
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    pre_stop_s = float(pre_stop[1])
    assert pod["terminationGracePeriodSeconds"] > pre_stop_s + drain_s, \
        "the kubelet would SIGKILL the server before its drain ends"
    liveness = container["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] > pre_stop_s + drain_s, \
        "a drain could look like a hang to the liveness probe"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_ports_and_scrape_annotations_agree(overlay):
    resources = kustomize_resources(OVERLAYS[overlay])
    deployment = one(resources, "Deployment")
    template = deployment["spec"]["template"]
    container = template["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    defaults = ServerConfig.__dataclass_fields__
    assert ports == {"grpc": defaults["grpc_port"].default,
                     "metrics": defaults["metrics_port"].default,
                     "http": defaults["http_port"].default}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == ports["grpc"], probe
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == ports["metrics"]
    assert annotations["prometheus.io/path"] == "/metrics"
    # The image's exposed ports and numeric user are what the manifests rely on.
    assert dockerfile_instruction("EXPOSE") == [
        f"{ports['grpc']} {ports['metrics']} {ports['http']}"]
    user, group = dockerfile_instruction("USER")[0].split(":")
    security = template["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True
    assert (security["runAsUser"], security["runAsGroup"]) == (int(user), int(group))
    labels = template["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for service in (r for r in resources if r["kind"] == "Service"):
        assert service["spec"]["selector"].items() <= labels.items()
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, port
        grpc_port = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
        assert grpc_port["appProtocol"] == "grpc"
    pdb = one(resources, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = one(resources, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    assert hpa["spec"]["minReplicas"] >= 1 and hpa["spec"]["maxReplicas"] > \
        hpa["spec"]["minReplicas"]
    # The HPA scales on CPU utilisation, which needs a CPU request to be relative to.
    assert container["resources"]["requests"]["cpu"]


def test_gpu_overlay_asks_for_one_gpu_and_the_gpu_image():
    cpu = one(kustomize_resources(K8S), "Deployment")["spec"]["template"]["spec"]
    gpu = one(kustomize_resources(K8S / "gpu"), "Deployment")["spec"]["template"]["spec"]
    cpu_container, gpu_container = cpu["containers"][0], gpu["containers"][0]
    assert "nvidia.com/gpu" not in cpu_container["resources"]["limits"]
    assert gpu_container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu_container["image"].endswith(":gpu") and cpu_container["image"].endswith(":cpu")
    assert env_of(gpu_container)["SERVE_USE_GPU"] == "true"
    assert env_of(cpu_container)["SERVE_USE_GPU"] == "false"
    # The patch merged into the base container instead of adding a second one.
    assert [c["name"] for c in gpu["containers"]] == ["server"]
    assert gpu_container["lifecycle"] == cpu_container["lifecycle"]


def _as_pod(name: str, pod_spec: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": pod_spec}


def test_kserve_custom_predictor_speaks_v2_grpc_on_8001():
    isvc = one(documents(KSERVE / "inferenceservice.yaml"), "InferenceService")
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", isvc["metadata"]["name"])
    predictor = isvc["spec"]["predictor"]
    containers = predictor["containers"]
    assert [c["name"] for c in containers] == ["kserve-container"]
    container = containers[0]
    assert env_of(container)["PROTOCOL"] == "v2"  # KServe's protocol key for custom containers
    assert container["ports"] == [{"name": "h2c", "containerPort": 8001, "protocol": "TCP"}]
    args = container["args"]
    assert args[:3] == ["python", "-m", "server"]
    assert args[args.index("--grpc-port") + 1] == "8001"
    assert container["readinessProbe"]["grpc"]["port"] == 8001
    assert predictor["minReplicas"] <= predictor["maxReplicas"]
    assert isvc["metadata"]["annotations"]["prometheus.kserve.io/port"] == "8002"
    validate(_as_pod("kserve-predictor", {"containers": containers}))


def test_kserve_serving_runtime_and_model_agree():
    docs = documents(KSERVE / "servingruntime.yaml")
    runtime = one(docs, "ServingRuntime")
    isvc = one(docs, "InferenceService")
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    assert model["protocolVersion"] in ("v2", "grpc-v2")
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["modelFormat"]["name"] in formats
    container = runtime["spec"]["containers"][0]
    assert container["name"] == "kserve-container"
    # KServe's storage initializer puts storageUri's contents at /mnt/models.
    args = container["args"]
    assert args[args.index("--model-repository") + 1] == "/mnt/models"
    assert container["ports"][0]["name"] == "h2c"
    validate(_as_pod("serving-runtime", {"containers": runtime["spec"]["containers"]}))


def test_prometheus_config_scrapes_static_and_annotated_pods():
    config = documents(MONITORING / "prometheus.yml")[0]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    static = jobs["onnx-serve"]
    assert static["metrics_path"] == "/metrics"
    assert static["static_configs"][0]["targets"] == ["localhost:8002"]
    pods = jobs["onnx-serve-pods"]
    assert pods["kubernetes_sd_configs"] == [{"role": "pod"}]
    keep = [r for r in pods["relabel_configs"] if r.get("action") == "keep"]
    assert ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"] in \
        [r["source_labels"] for r in keep]
    address = next(r for r in pods["relabel_configs"] if r.get("target_label") == "__address__")
    # The address rewrite turns (pod IP with a port, annotated port) into IP:annotated.
    joined = "10.1.2.3:8001;8002"
    assert re.sub(f"^(?:{address['regex']})$", address["replacement"].replace("$", "\\"),
                  joined) == "10.1.2.3:8002"
