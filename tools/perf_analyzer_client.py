"""perf_analyzer (Triton's C++ load generator) as the client of a comparison.

The Python load client (tools.bench) saturates near 13-14k req/s on a 2-core box and
costs the server's cores more CPU than a C++ client would; for the headline against
Triton, ``python -m tools.peer_compare --perf-analyzer PATH`` drives every server with
perf_analyzer instead (README "perf_analyzer" says where the binary comes from: the
tritonclient 2.41 wheel). Each point runs perf_analyzer once (``-p`` windows until
stable, at most four) and reads its throughput and p50/p99; the server's CPU comes
from /proc over the same run, per request the server counted in its statistics.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from tools.bench import _say, batch_counters, process_tree_cpu_s, reviews

_THROUGHPUT = re.compile(r"Throughput: ([\d.]+) infer/sec")
_P50 = re.compile(r"p50 latency: (\d+) usec")
_P99 = re.compile(r"p99 latency: (\d+) usec")


def find(path: str | None) -> Path:
    """The perf_analyzer binary: ``path``, else the one on PATH; SystemExit saying how to
    get one when there is none."""
    found = path or shutil.which("perf_analyzer")
    if not found or not Path(found).is_file():
        raise SystemExit(f"perf_analyzer not found ({path or 'not on PATH'}): see README "
                         "'perf_analyzer' for the tritonclient 2.41 wheel that carries it")
    return Path(found).resolve()


def environment(binary: Path) -> dict[str, str]:
    """The environment to run it in: libcudart from an nvidia-cuda-runtime wheel installed
    in the same virtual environment as the binary (it needs the library even without a
    GPU), added to LD_LIBRARY_PATH when there is one."""
    env = dict(os.environ)
    venv = binary.parent.parent
    libs = sorted(venv.glob("lib/python3*/site-packages/nvidia/cuda_runtime/lib"))
    if libs:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            [str(libs[-1])] + [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p])
    return env


class Inputs:
    """perf_analyzer's input arguments per model: MNIST random images of the right shape,
    sentiment real review text (a JSON file of ``--input-data``)."""

    def __init__(self) -> None:
        self._folder = Path(tempfile.mkdtemp(prefix="pa-inputs-"))

    def args(self, model: str) -> list[str]:
        if model.startswith("sentiment"):
            path = self._folder / "reviews.json"
            if not path.exists():
                texts, _ = reviews(64)
                path.write_text(json.dumps({"data": [{"text": [t]} for t in texts]}))
            return ["--input-data", str(path)]
        return ["--shape", "image:28,28,1"]

    def close(self) -> None:
        shutil.rmtree(self._folder, ignore_errors=True)


def measure(binary: Path, env: dict[str, str], inputs: Inputs, label: str, grpc_url: str,
            url: str, protocol: str, model: str, concurrency: int, duration_s: float,
            server_pid: int | None) -> dict:
    """One point: perf_analyzer against ``url`` (host:port) over ``protocol``; the server's
    statistics are read over gRPC at ``grpc_url``."""
    _say(f"[{label}] perf_analyzer {model} {protocol} concurrency {concurrency} ...")
    def command(stability_percent: int) -> list[str]:
        return [str(binary), "-m", model, "-u", url, "-i", protocol, "-b", "1",
                "--concurrency-range", str(concurrency), "-p", str(int(duration_s * 1000)),
                "--max-trials", "4", "-s", str(stability_percent), *inputs.args(model)]

    rows0, _ = batch_counters(grpc_url, model)
    cpu0 = process_tree_cpu_s(server_pid)
    text = _run(command(20), env, duration_s)
    if "stable measurement" in text and not _THROUGHPUT.findall(text):
        # A busy machine: accept a wider spread rather than no figure (said in the output)
        _say("    not stable within 20 %; measuring again accepting 50 %")
        text = _run(command(50), env, duration_s)
    cpu1 = process_tree_cpu_s(server_pid)
    rows1, _ = batch_counters(grpc_url, model)
    throughput = _THROUGHPUT.findall(text)
    if not throughput:
        _say(f"    perf_analyzer failed: {text.strip()[-300:]}")
        return {"model": model, "protocol": protocol, "concurrency": concurrency,
                "server": label, "throughput_rps": float("nan"), "p50_ms": float("nan"),
                "p99_ms": float("nan"), "server_cpu_ms_per_request": float("nan")}
    # Every request perf_analyzer sent, warm-up and all trials: what the CPU was spent on.
    cpu_ms = (cpu1 - cpu0) * 1e3 / max(1, rows1 - rows0)
    point = {"model": model, "protocol": protocol, "concurrency": concurrency,
             "server": label, "throughput_rps": float(throughput[-1]),
             "p50_ms": int(_P50.findall(text)[-1]) / 1e3,
             "p99_ms": int(_P99.findall(text)[-1]) / 1e3,
             "server_cpu_ms_per_request": cpu_ms}
    _say(f"    {point['throughput_rps']:8.0f} req/s  p50 {point['p50_ms']:7.2f} ms  "
         f"p99 {point['p99_ms']:7.2f} ms  server CPU {cpu_ms:5.3f} ms/req")
    return point


def _run(cmd: list[str], env: dict[str, str], duration_s: float) -> str:
    run = subprocess.run(cmd, env=env, capture_output=True, text=True,
                         timeout=60 + 10 * duration_s)
    return run.stdout + run.stderr
