"""ModelStatistics of several worker processes summed into one answer.

With ``--workers N`` every worker counts only the requests it served; clients
(perf_analyzer, Triton's statistics) must see one server, so the worker that answers a
public ModelStatistics call adds its peers' answers field by field: counts and
nanoseconds add, per-batch-size statistics merge by batch size, last_inference is the
latest. Versions are matched by (name, version).
"""

from __future__ import annotations

from server.protocol import grpc_service_pb2 as pb

_DURATIONS = tuple(f.name for f in pb.InferStatistics.DESCRIPTOR.fields)
_BATCH_DURATIONS = tuple(f.name for f in pb.InferBatchStatistics.DESCRIPTOR.fields
                         if f.name != "batch_size")


def merge_statistics(responses) -> pb.ModelStatisticsResponse:
    """One response whose every model version sums the same version in ``responses``."""
    merged: dict[tuple[str, str], pb.ModelStatistics] = {}
    for response in responses:
        for stats in response.model_stats:
            key = (stats.name, stats.version)
            into = merged.get(key)
            if into is None:
                into = merged[key] = pb.ModelStatistics()
                into.CopyFrom(stats)
            else:
                _add(into, stats)
    out = pb.ModelStatisticsResponse()
    for key in sorted(merged, key=_order):
        out.model_stats.add().CopyFrom(merged[key])
    return out


def _order(key: tuple[str, str]):
    name, version = key
    return (name, int(version) if version.isdigit() else -1, version)


def _add(into: pb.ModelStatistics, other: pb.ModelStatistics) -> None:
    into.last_inference = max(into.last_inference, other.last_inference)
    into.inference_count += other.inference_count
    into.execution_count += other.execution_count
    for name in _DURATIONS:
        _add_duration(getattr(into.inference_stats, name), getattr(other.inference_stats, name))
    sizes = {b.batch_size: b for b in into.batch_stats}
    for batch in other.batch_stats:
        mine = sizes.get(batch.batch_size)
        if mine is None:
            sizes[batch.batch_size] = batch
            continue
        for name in _BATCH_DURATIONS:
            _add_duration(getattr(mine, name), getattr(batch, name))
    ordered = [sizes[size] for size in sorted(sizes)]
    copies = [pb.InferBatchStatistics() for _ in ordered]
    for copy, batch in zip(copies, ordered):
        copy.CopyFrom(batch)
    del into.batch_stats[:]
    into.batch_stats.extend(copies)


def _add_duration(into: pb.StatisticDuration, other: pb.StatisticDuration) -> None:
    into.count += other.count
    into.ns += other.ns
