"""What one load of a model serves: its config (as read) and the version numbers chosen.

A plan is made once, from the repository's files, by whoever decides a load; loading
the same plan elsewhere (another worker process, a worker restarted later) serves the
same config and the same versions even if the files changed in between: a version 2
folder dropped in, a config.pbtxt edited but not yet loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import json_format, text_format

from server.core.errors import InvalidInputError, ModelLoadError
from server.core.model_config import ModelSpec, read_model_config, spec_from_proto
from server.core.rollout import check_rollout_versions, rollout_spec
from server.protocol import model_config_pb2

OVERRIDE = "load config override"  # how errors name a config sent with a load


@dataclass(frozen=True)
class LoadPlan:
    config_text: str  # the ModelConfig as parsed, in protobuf text format
    versions: tuple[int, ...]
    # The files' fingerprint when the plan was read (what a poll compares); a plan that
    # came from elsewhere has none. Not part of what a plan *is*.
    fingerprint: tuple = field(default=(), compare=False)

    def spec(self, name: str) -> ModelSpec:
        proto = text_format.Parse(self.config_text, model_config_pb2.ModelConfig())
        return spec_from_proto(proto, name)

    def to_json(self) -> dict:
        return {"config": self.config_text, "versions": list(self.versions)}

    @classmethod
    def from_json(cls, data: dict) -> "LoadPlan":
        return cls(str(data["config"]), tuple(int(v) for v in data["versions"]))

    def dumps(self) -> str:
        return json.dumps(self.to_json())

    @classmethod
    def loads(cls, text: str) -> "LoadPlan":
        return cls.from_json(json.loads(text))

    def describe(self) -> str:
        return f"versions {list(self.versions)}"


def plan_from_disk(name: str, path: Path, inside, fingerprint: tuple = ()) -> LoadPlan:
    """The plan the files say now: config.pbtxt and the versions its policy selects.
    ``inside(name, path)`` refuses files that a symlink leads out of the repository."""
    spec = read_model_config(path)
    chosen = _chosen_versions(name, path, spec, inside)
    return LoadPlan(text_format.MessageToString(spec.proto), tuple(chosen), fingerprint)


def plan_from_override(name: str, path: Path, inside, config_json: str,
                       fingerprint: tuple = ()) -> LoadPlan:
    """The plan of a load that sends its own config (Triton's ``config`` load parameter:
    a ModelConfig as JSON), which replaces config.pbtxt for this load only; the versions
    come from the folder as its version policy selects them. Checked as a config file
    is, plus the rollout against those versions, before anything is built: every
    refusal is the caller's to fix (InvalidInputError, quoting the bad value)."""
    proto = parse_override(name, config_json)
    try:
        spec = spec_from_proto(proto, name, OVERRIDE)
        chosen = _chosen_versions(name, path, spec, inside)
        where = f"model {name!r} {OVERRIDE}"
        rollout = rollout_spec(spec.parameters, where)
        if rollout is not None:
            check_rollout_versions(rollout, chosen, where)
    except ModelLoadError as exc:
        message = str(exc)
        raise InvalidInputError(message if OVERRIDE in message else
                                f"{OVERRIDE}: {message}") from None
    return LoadPlan(text_format.MessageToString(spec.proto), tuple(chosen), fingerprint)


def parse_override(name: str, config_json: str) -> model_config_pb2.ModelConfig:
    """A ModelConfig from its JSON form (protobuf's JSON mapping, as Triton reads it);
    unknown fields are refused, not ignored: a typo must not load the files' value."""
    try:
        return json_format.Parse(config_json, model_config_pb2.ModelConfig())
    except json_format.ParseError as exc:
        # protobuf lists every field of ModelConfig after an unknown one: keep the point.
        reason = str(exc).split(" Available Fields")[0]
        raise InvalidInputError(f"model {name!r} {OVERRIDE}: not a ModelConfig in JSON: "
                                f"{reason[:300]}") from None


def _chosen_versions(name: str, path: Path, spec: ModelSpec, inside) -> list[int]:
    available = [int(c.name) for c in path.iterdir()
                 if c.is_dir() and c.name.isdigit() and (c / spec.model_filename).is_file()
                 and inside(name, c / spec.model_filename)]
    chosen = spec.version_policy.select(available)
    if not chosen:
        raise ModelLoadError(f"model {name!r}: no version folder with "
                             f"{spec.model_filename} matches version policy "
                             f"{spec.version_policy.kind} (found versions "
                             f"{sorted(available)})")
    return chosen


def check_plan_files(name: str, path: Path, plan: LoadPlan, inside) -> ModelSpec:
    """The spec of a plan made elsewhere, once its version files are found here."""
    spec = plan.spec(name)
    for number in plan.versions:
        model_file = path / str(number) / spec.model_filename
        if not (model_file.is_file() and inside(name, model_file)):
            raise ModelLoadError(f"model {name!r}: version {number}, which the other "
                                 f"workers serve, has no {spec.model_filename} on disk "
                                 "any more")
    return spec
