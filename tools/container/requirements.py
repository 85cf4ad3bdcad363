"""Print the serving requirements from pyproject.toml, one per line, for the image build.

The Dockerfile installs these first (a layer that survives source edits), then the
project itself with ``--no-deps``. Only ``[project].dependencies`` are read: the
``train`` extra (TensorFlow) never reaches an image. ``--variant gpu`` swaps
``onnxruntime`` for the ``gpu`` extra (its ``onnxruntime-gpu``: both install the same
``onnxruntime`` module, so they must never sit in one environment) and makes sure
``nvidia-ml-py`` is there, which server/metrics.py needs for its GPU metrics.

Usage: python3 requirements.py [--variant cpu|gpu] [--gpu-requirement SPEC] pyproject.toml
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def _name(requirement: str) -> str:
    match = _NAME.match(requirement)
    if match is None:
        raise ValueError(f"cannot read a package name from requirement {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


# What a GPU image needs beyond the `gpu` extra when the extra lacks it.
GPU_ALWAYS = ("nvidia-ml-py",)


def requirements(project: dict, variant: str, gpu_requirement: str | None) -> list[str]:
    core = list(project["dependencies"])
    if variant == "cpu":
        return core
    gpu_extra = list(project.get("optional-dependencies", {}).get("gpu", []))
    if not any(_name(r) == "onnxruntime-gpu" for r in gpu_extra) and gpu_requirement is None:
        raise ValueError("pyproject.toml has no onnxruntime-gpu in the `gpu` extra; "
                         "pass --gpu-requirement")
    if gpu_requirement is not None:
        gpu_extra = [r for r in gpu_extra if _name(r) != "onnxruntime-gpu"]
        gpu_extra.append(gpu_requirement)
    present = {_name(r) for r in gpu_extra}
    gpu_extra += [r for r in GPU_ALWAYS if r not in present]
    return [r for r in core if _name(r) != "onnxruntime"] + gpu_extra


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject")
    parser.add_argument("--variant", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--gpu-requirement", default=None,
                        help="requirement to use instead of the gpu extra's onnxruntime-gpu")
    args = parser.parse_args(argv)
    with open(args.pyproject, "rb") as handle:
        project = tomllib.load(handle)["project"]
    try:
        lines = requirements(project, args.variant, args.gpu_requirement or None)
    except ValueError as exc:
        print(f"requirements.py: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
