"""Our REST extensions' reports (server.dataplane.reports) summed over every worker.

A peer is asked over its private socket with ``ModelConfig`` and the phase
``report-<kind>``; it answers with its own raw counts as JSON in one parameter of the
returned ModelConfig (the private calls speak the public gRPC service, which has no
free-form answer). A worker that does not answer (being restarted) is left out, and the
report's ``workers`` says how many are in.
"""

from __future__ import annotations

import json
import logging

from server.dataplane import reports
from server.protocol import grpc_service_pb2 as pb
from server.protocol import model_config_pb2

log = logging.getLogger("server.cluster")

REPORT_PHASE = "report-"
REPORT_PARAMETER = "x-onnxserve-report"
REPORT_TIMEOUT_S = 10.0


def report_kind(phase: str | None) -> str | None:
    """The report a peer call asks for, or None when it asks for none."""
    if phase and phase.startswith(REPORT_PHASE):
        return phase[len(REPORT_PHASE):]
    return None


def report_answer(doc: dict) -> pb.ModelConfigResponse:
    config = model_config_pb2.ModelConfig()
    config.parameters[REPORT_PARAMETER].string_value = json.dumps(doc)
    return pb.ModelConfigResponse(config=config)


async def gather_reports(peers, kind: str, name: str, version: str, mine: dict) -> dict:
    """``mine`` and every peer's raw report of ``kind``, merged (not finished)."""
    request = pb.ModelConfigRequest(name=name, version=version)
    answers = await peers.call("ModelConfig", request, phase=REPORT_PHASE + kind,
                               timeout_s=REPORT_TIMEOUT_S)
    found = [mine]
    for index, answer in sorted(answers.items()):
        if isinstance(answer, pb.ModelConfigResponse):
            try:
                found.append(json.loads(
                    answer.config.parameters[REPORT_PARAMETER].string_value))
                continue
            except ValueError as exc:
                problem = f"unreadable answer: {exc}"
        else:
            problem = _describe(answer)
        log.warning("worker %d left out of the %s report of %r: %s", index, kind,
                    name[:100], problem)
    return reports.merge(kind, found)


def _describe(exc: BaseException) -> str:
    code, details = getattr(exc, "code", None), getattr(exc, "details", None)
    if callable(code) and callable(details):  # a gRPC error: its status and message
        return f"{code().name}: {details()}"
    return f"{type(exc).__name__}: {exc}"
