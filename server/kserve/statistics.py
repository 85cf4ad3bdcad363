"""ModelStatistics: the domain counters (server.core.stats) as Triton's statistics messages."""

from __future__ import annotations

from server.core.errors import ModelNotFoundError
from server.protocol import grpc_service_pb2 as pb
from server.core.repository import ModelRepository
from server.core.stats import Duration, ModelStats


def statistics_response(repo: ModelRepository, name: str,
                        version: str) -> pb.ModelStatisticsResponse:
    """Statistics of every loaded version, or of one model / one version."""
    versions = repo.loaded_versions()
    if name:
        versions = [v for v in versions if v.name == name]
        if version:
            versions = [v for v in versions if str(v.version) == version]
        if not versions:
            raise ModelNotFoundError(f"no loaded model {name!r}"
                                     + (f" version {version!r}" if version else ""))
    response = pb.ModelStatisticsResponse()
    for model in sorted(versions, key=lambda v: (v.name, v.version)):
        _fill(response.model_stats.add(), model.name, model.version, model.stats)
    return response


def _fill(out: pb.ModelStatistics, name: str, version: int, stats: ModelStats) -> None:
    out.name = name
    out.version = str(version)
    out.last_inference = stats.last_inference_ms
    out.inference_count = stats.inference_count
    out.execution_count = stats.execution_count
    infer = out.inference_stats
    for field in ("success", "fail", "queue", "compute_input", "compute_infer",
                  "compute_output", "cache_hit", "cache_miss"):
        _duration(getattr(infer, field), getattr(stats, field))
    for size in sorted(stats.batches):
        per_size = stats.batches[size]
        batch = out.batch_stats.add(batch_size=size)
        _duration(batch.compute_input, per_size.compute_input)
        _duration(batch.compute_infer, per_size.compute_infer)
        _duration(batch.compute_output, per_size.compute_output)


def _duration(out: pb.StatisticDuration, value: Duration) -> None:
    out.count = value.count
    out.ns = value.ns
