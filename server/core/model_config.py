"""A model's config.pbtxt (Triton ModelConfig text format) -> a validated ModelSpec.

The file is parsed with protobuf ``text_format`` into our wire-compatible ModelConfig,
so every Triton config that uses the supported fields reads the same here. The spec
keeps the original message too: ModelConfig RPCs return it as loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format

from server.core.datatypes import CONFIG_TO_V2, V2_TO_NUMPY
from server.core.errors import ModelLoadError
from server.protocol import model_config_pb2

CONFIG_FILE = "config.pbtxt"
SUPPORTED_PLATFORMS = ("onnxruntime_onnx",)
SUPPORTED_BACKENDS = ("onnxruntime", "")
DEFAULT_MAX_QUEUE_SIZE = 1024  # bounded even when the config says 0 (Triton: unbounded)


@dataclass(frozen=True)
class TensorSpec:
    """A served tensor: V2 datatype and dims *without* the batch dimension (-1 = any)."""

    name: str
    datatype: str
    dims: tuple[int, ...]

    @property
    def numpy_dtype(self):
        return V2_TO_NUMPY[self.datatype]


@dataclass(frozen=True)
class BatchingSpec:
    max_queue_delay_us: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE
    default_timeout_us: int = 0  # 0 = no queue timeout


@dataclass(frozen=True)
class VersionPolicy:
    kind: str = "latest"  # latest | all | specific
    latest_count: int = 1
    specific: tuple[int, ...] = ()

    def select(self, available: list[int]) -> list[int]:
        ordered = sorted(available)
        if self.kind == "all":
            return ordered
        if self.kind == "specific":
            return [v for v in ordered if v in self.specific]
        return ordered[-self.latest_count:] if ordered else []


@dataclass(frozen=True)
class ModelSpec:
    name: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batching: BatchingSpec
    version_policy: VersionPolicy
    instance_count: int = 1
    model_filename: str = "model.onnx"
    parameters: dict[str, str] = field(default_factory=dict)
    response_cache: bool = False  # response_cache { enable: true }: answers may be cached
    proto: model_config_pb2.ModelConfig = field(default=None, compare=False, repr=False)

    def input(self, name: str) -> TensorSpec | None:
        return next((t for t in self.inputs if t.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        return next((t for t in self.outputs if t.name == name), None)


def read_model_config(model_dir: Path) -> ModelSpec:
    """Parse and validate ``<model_dir>/config.pbtxt``; the folder name is the model name."""
    path = model_dir / CONFIG_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelLoadError(f"model {model_dir.name!r}: {path} is missing; every model "
                             "folder needs a config.pbtxt (Triton ModelConfig text format)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"model {model_dir.name!r}: cannot read {path}: {exc}") from None
    try:
        proto = text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise ModelLoadError(f"model {model_dir.name!r}: {path} is not valid ModelConfig "
                             f"text: {exc}") from None
    return spec_from_proto(proto, model_dir.name)


def spec_from_proto(proto: model_config_pb2.ModelConfig, folder_name: str,
                    source: str = CONFIG_FILE) -> ModelSpec:
    """``source`` names where the config came from in errors (a load's config override)."""
    where = f"model {folder_name!r} {source}"
    if proto.name and proto.name != folder_name:
        raise ModelLoadError(f"{where}: name {proto.name!r} differs from its folder name "
                             f"{folder_name!r}")
    if not proto.name:
        proto.name = folder_name
    if proto.platform not in SUPPORTED_PLATFORMS and not (
            proto.backend == "onnxruntime" and not proto.platform):
        raise ModelLoadError(f"{where}: platform {proto.platform!r} / backend "
                             f"{proto.backend!r} is not served; use platform "
                             "\"onnxruntime_onnx\"")
    if proto.max_batch_size < 0:
        raise ModelLoadError(f"{where}: max_batch_size must be >= 0, got {proto.max_batch_size}")
    inputs = tuple(_tensor(t, where, "input") for t in proto.input)
    outputs = tuple(_tensor(t, where, "output") for t in proto.output)
    if not inputs or not outputs:
        raise ModelLoadError(f"{where}: needs at least one input and one output "
                             f"(got {len(inputs)} inputs, {len(outputs)} outputs)")
    for kind, tensors in (("input", inputs), ("output", outputs)):
        names = [t.name for t in tensors]
        if len(set(names)) != len(names):
            raise ModelLoadError(f"{where}: duplicate {kind} names in {names}")
    counts = [g.count for g in proto.instance_group if g.count > 0]
    return ModelSpec(
        name=proto.name,
        max_batch_size=proto.max_batch_size,
        inputs=inputs,
        outputs=outputs,
        batching=_batching(proto, where),
        version_policy=_version_policy(proto, where),
        instance_count=max(1, sum(counts)) if counts else 1,
        model_filename=proto.default_model_filename or "model.onnx",
        parameters={k: v.string_value for k, v in proto.parameters.items()},
        response_cache=proto.response_cache.enable,
        proto=proto,
    )


def _tensor(t, where: str, kind: str) -> TensorSpec:
    # proto3 enums are open: text format accepts any number, which Name() refuses.
    type_name = model_config_pb2.DataType.Name(t.data_type) if t.data_type in (
        model_config_pb2.DataType.values()) else str(t.data_type)
    if type_name not in CONFIG_TO_V2:
        raise ModelLoadError(f"{where}: {kind} {t.name!r} has unsupported data_type "
                             f"{type_name}")
    if not t.name:
        raise ModelLoadError(f"{where}: an {kind} has no name")
    dims = tuple(int(d) for d in t.dims)
    if any(d < -1 or d == 0 for d in dims):
        raise ModelLoadError(f"{where}: {kind} {t.name!r} dims {list(dims)} must be "
                             "positive or -1")
    return TensorSpec(name=t.name, datatype=CONFIG_TO_V2[type_name], dims=dims)


def _batching(proto, where: str) -> BatchingSpec:
    if not proto.HasField("dynamic_batching"):
        return BatchingSpec()
    db = proto.dynamic_batching
    policy = db.default_queue_policy
    queue_size = policy.max_queue_size or DEFAULT_MAX_QUEUE_SIZE
    preferred = tuple(sorted(int(b) for b in db.preferred_batch_size))
    if proto.max_batch_size and any(b > proto.max_batch_size or b < 1 for b in preferred):
        raise ModelLoadError(f"{where}: preferred_batch_size {list(preferred)} must lie in "
                             f"1..max_batch_size ({proto.max_batch_size})")
    return BatchingSpec(
        max_queue_delay_us=int(db.max_queue_delay_microseconds),
        preferred_batch_sizes=preferred,
        max_queue_size=int(queue_size),
        default_timeout_us=int(policy.default_timeout_microseconds),
    )


def _version_policy(proto, where: str) -> VersionPolicy:
    if not proto.HasField("version_policy"):
        return VersionPolicy()
    vp = proto.version_policy
    which = vp.WhichOneof("policy_choice")
    if which == "all":
        return VersionPolicy(kind="all")
    if which == "specific":
        versions = tuple(int(v) for v in vp.specific.versions)
        if not versions:
            raise ModelLoadError(f"{where}: version_policy specific lists no versions")
        return VersionPolicy(kind="specific", specific=versions)
    count = vp.latest.num_versions if which == "latest" else 1
    if count < 1:
        raise ModelLoadError(f"{where}: version_policy latest num_versions must be >= 1, "
                             f"got {count}")
    return VersionPolicy(kind="latest", latest_count=count)
