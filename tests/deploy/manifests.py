"""Loading and rendering the deploy/ manifests for the deploy tests (no cluster needed)."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from tests.conftest import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
K8S = DEPLOY / "k8s"
KSERVE = DEPLOY / "kserve"
MONITORING = DEPLOY / "monitoring"
# The oldest Kubernetes release the manifests support (native gRPC probes are GA since
# 1.27, autoscaling/v2 and policy/v1 long before); the tests also check against the
# newest release the installed kubernetes-validate knows.
K8S_MIN_VERSION = "1.30.0"


def documents(path: Path) -> list[dict]:
    with path.open() as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc]


def kustomize_resources(folder: Path) -> list[dict]:
    """The resources a kustomization lists (recursing into bases), patches applied.

    A small subset of kustomize: `resources`, strategic-merge `patches` by kind/name
    (lists of named items merge by name, other lists are replaced) and `images` tags.
    Enough for our overlays; `kubectl kustomize` renders the same for these files.
    """
    kustomization = documents(folder / "kustomization.yaml")[0]
    resources: list[dict] = []
    for entry in kustomization.get("resources", []):
        target = (folder / entry).resolve()
        if target.is_dir():
            resources.extend(kustomize_resources(target))
        else:
            resources.extend(documents(target))
    for patch in kustomization.get("patches", []):
        body = documents(folder / patch["path"])[0]
        wanted = patch.get("target", {})
        matched = [r for r in resources
                   if r["kind"] == wanted.get("kind", body["kind"])
                   and r["metadata"]["name"] == wanted.get("name", body["metadata"]["name"])]
        assert matched, f"patch {patch['path']} matches no resource"
        for resource in matched:
            merge(resource, body)
    for image in kustomization.get("images", []):
        for container in containers_of(resources):
            repo, _, _ = container["image"].partition(":")
            if repo == image["name"]:
                container["image"] = f"{image.get('newName', repo)}:{image['newTag']}"
    return resources


def merge(base: dict, patch: dict) -> None:
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        elif (isinstance(value, list) and isinstance(base.get(key), list)
              and all(isinstance(v, dict) and "name" in v for v in value + base[key])):
            by_name = {item["name"]: item for item in base[key]}
            for item in value:
                if item["name"] in by_name:
                    merge(by_name[item["name"]], item)
                else:
                    base[key].append(copy.deepcopy(item))
        else:
            base[key] = copy.deepcopy(value)


def containers_of(resources: list[dict]) -> list[dict]:
    found = []
    for resource in resources:
        spec = resource.get("spec", {})
        pod = spec.get("template", {}).get("spec", {})
        found.extend(pod.get("containers", []))
    return found


def one(resources: list[dict], kind: str, name: str | None = None) -> dict:
    matches = [r for r in resources
               if r["kind"] == kind and (name is None or r["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def env_of(container: dict) -> dict[str, str]:
    return {item["name"]: item.get("value") for item in container.get("env", [])}
