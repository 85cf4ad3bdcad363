"""Server settings: one typed dataclass, validated at start-up.

Each setting comes from a command-line flag, else an environment variable
(``SERVE_<NAME>``), else its default. Parsing happens only in :func:`load_config`,
never at import time.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Mapping, Sequence

MODEL_CONTROL_MODES = ("none", "explicit", "poll")
# Who serves the public gRPC port: "native" (pygrpc-native, calls taken in batches; no
# TLS), "grpcio" (grpc.aio), or "auto": native unless TLS is configured.
GRPC_FRONTENDS = ("auto", "native", "grpcio")
LOG_FORMATS = ("text", "json")


@dataclass(frozen=True)
class ServerConfig:
    model_repository: Path = Path("models")
    grpc_host: str = "0.0.0.0"
    grpc_port: int = 8001
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 8002  # 0 lets the OS pick a free port (logged at start)
    metrics_enabled: bool = True  # serve Prometheus /metrics on metrics_host:metrics_port
    # KServe v2 REST and the web console (same TLS and repository API key as gRPC).
    http_host: str = "0.0.0.0"
    http_port: int = 8000  # Triton's default; 0 lets the OS pick a free port (logged)
    http_enabled: bool = True
    # REST connection limits (0 = none): a whole request body must arrive within
    # http_body_read_timeout_s, a request's headers within http_header_read_timeout_s
    # of their first byte; idle keep-alive connections close after
    # http_keepalive_timeout_s (above load balancers' usual 60 s idle timeout).
    http_body_read_timeout_s: float = 60.0
    http_header_read_timeout_s: float = 10.0
    http_keepalive_timeout_s: float = 75.0
    # ONNX Runtime threads per model. 0 lets ORT choose; on small machines a fixed
    # count that leaves the gRPC thread room is faster (measure with `make bench`).
    intra_op_threads: int = 0
    # ORT's pool threads busy-spin between runs by default, stealing CPU from the
    # event loop; off unless asked for.
    ort_spinning: bool = False
    use_gpu: bool = True  # CUDA execution provider when onnxruntime-gpu finds a GPU
    drain_timeout_s: float = 30.0
    max_message_bytes: int = 64 * 1024 * 1024
    # Sum of inference request bytes held at once; past it requests get
    # RESOURCE_EXHAUSTED. 256 MiB: with parsing copies, well inside a 2 GiB pod.
    max_inflight_request_bytes: int = 256 * 1024 * 1024
    # HTTP/2 limits (gRPC). Concurrent streams per connection: grpcio serves unlimited
    # by default, and a client that opens and resets streams without end then gets
    # other clients' calls CANCELLED (measured: 49 of 932; none at 128 or 1,024). Kept
    # well above real clients' concurrency: a client that opens more streams than this
    # on a fresh connection sees the extra calls refused (UNAVAILABLE, RST_STREAM 7).
    # Idle connections close (clients reconnect on their next call), so abandoned
    # ones cannot pile up to the file-descriptor limit.
    grpc_max_concurrent_streams: int = 1024
    grpc_max_connection_idle_s: float = 300.0
    grpc_max_connection_age_s: float = 0.0  # 0 = no limit; set it to rebalance behind an L4 LB
    grpc_max_connection_age_grace_s: float = 30.0
    grpc_keepalive_time_s: float = 60.0  # ping idle clients to find dead connections
    grpc_keepalive_timeout_s: float = 20.0
    grpc_frontend: str = "auto"
    model_control_mode: str = "none"
    repository_poll_interval_s: float = 15.0
    # Models to load at start in explicit mode (Triton's --load-model); empty = all.
    startup_models: tuple[str, ...] = ()
    log_format: str = "text"
    log_level: str = "INFO"
    access_log: bool = False
    # Drift against each version's reference.json (README "Drift"): the window holds about
    # the last drift_window_rows rows, none older than drift_window_s.
    drift_enabled: bool = True
    drift_window_rows: int = 10_000
    drift_window_s: float = 600.0
    drift_max_rows_per_s: float = 2000.0  # per version; above it, a sample (0 = every row)
    # Triton's response cache: bytes of answers held, least recently used out first; only
    # models with response_cache { enable: true } use it. 0 = off. Per worker process.
    response_cache_bytes: int = 0
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    # Repository load/unload callers must send this header ("name:value"); empty = open.
    repository_api_key: str = ""
    # Serving processes: 1 = this process serves (no supervisor); N >= 2 = a supervisor
    # (server/cluster/supervisor.py) runs N workers on one SO_REUSEPORT port; 0 = one per CPU.
    workers: int = 1
    # A worker whose event loop has not beaten its heartbeat for this long is reported
    # (log, /metrics, readiness) and replaced (SIGKILL, restart); 0 = never.
    worker_hang_timeout_s: float = 30.0
    # Set by the supervisor on the command line of each worker it spawns (hidden flags):
    # its index, the private runtime folder (peer sockets, ports, ready marks), and N.
    worker_index: int = -1
    worker_dir: Path | None = None
    worker_count: int = 1

    def __post_init__(self) -> None:
        _check_port("grpc_port", self.grpc_port, allow_zero=True)
        _check_port("metrics_port", self.metrics_port, allow_zero=True)
        _check_port("http_port", self.http_port, allow_zero=True)
        if self.intra_op_threads < 0:
            raise ValueError(f"intra_op_threads must be >= 0, got {self.intra_op_threads!r}")
        if self.drain_timeout_s < 0:
            raise ValueError(f"drain_timeout_s must be >= 0, got {self.drain_timeout_s!r}")
        if self.max_message_bytes < 1024:
            raise ValueError(
                f"max_message_bytes must be at least 1024, got {self.max_message_bytes!r}")
        if self.max_inflight_request_bytes < self.max_message_bytes:
            raise ValueError("max_inflight_request_bytes must be at least max_message_bytes "
                             f"({self.max_message_bytes}), got "
                             f"{self.max_inflight_request_bytes!r}")
        for name in ("http_body_read_timeout_s", "http_header_read_timeout_s",
                     "http_keepalive_timeout_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0 = off), got {getattr(self, name)!r}")
        if self.grpc_max_concurrent_streams < 1:
            raise ValueError("grpc_max_concurrent_streams must be >= 1, got "
                             f"{self.grpc_max_concurrent_streams!r}")
        for name in ("grpc_max_connection_idle_s", "grpc_max_connection_age_s",
                     "grpc_max_connection_age_grace_s", "grpc_keepalive_time_s",
                     "grpc_keepalive_timeout_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0 = off), got {getattr(self, name)!r}")
        if self.grpc_frontend not in GRPC_FRONTENDS:
            raise ValueError(f"grpc_frontend must be one of {GRPC_FRONTENDS}, got "
                             f"{self.grpc_frontend!r}")
        if self.grpc_frontend == "native" and self.tls_cert_file is not None:
            raise ValueError("grpc_frontend 'native' has no TLS, but tls_cert_file is set: use "
                             "--grpc-frontend grpcio (or auto) for a TLS gRPC port")
        if self.model_control_mode not in MODEL_CONTROL_MODES:
            raise ValueError(f"model_control_mode must be one of {MODEL_CONTROL_MODES}, "
                             f"got {self.model_control_mode!r}")
        if self.repository_poll_interval_s <= 0:
            raise ValueError("repository_poll_interval_s must be > 0, got "
                             f"{self.repository_poll_interval_s!r}")
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"log_format must be one of {LOG_FORMATS}, got {self.log_format!r}")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("TLS needs both tls_cert_file and tls_key_file, got "
                             f"cert={self.tls_cert_file!s} key={self.tls_key_file!s}")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file (mutual TLS) needs tls_cert_file and tls_key_file")
        if self.repository_api_key and ":" not in self.repository_api_key:
            raise ValueError("repository_api_key must look like 'header-name:secret', got "
                             "a value without ':'")
        if self.drift_window_rows < 100:
            raise ValueError("drift_window_rows must be >= 100 (fewer rows give no stable "
                             f"proportions), got {self.drift_window_rows!r}")
        if self.drift_window_s <= 0:
            raise ValueError(f"drift_window_s must be > 0, got {self.drift_window_s!r}")
        if self.drift_max_rows_per_s < 0:
            raise ValueError("drift_max_rows_per_s must be >= 0 (0 = every row), got "
                             f"{self.drift_max_rows_per_s!r}")
        if self.response_cache_bytes < 0:
            raise ValueError("response_cache_bytes must be >= 0 (0 = no cache), got "
                             f"{self.response_cache_bytes!r}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0 (0 = one per CPU), got {self.workers!r}")
        if self.worker_hang_timeout_s < 0:
            raise ValueError("worker_hang_timeout_s must be >= 0 (0 = never), got "
                             f"{self.worker_hang_timeout_s!r}")
        if self.worker_index >= 0 and (self.worker_dir is None or self.worker_count < 2):
            raise ValueError("--worker-index is set by the supervisor only (with --worker-dir "
                             f"and --worker-count >= 2), got index {self.worker_index!r}")
        if not self.model_repository.is_dir():
            raise ValueError(f"model repository {str(self.model_repository)!r} is not a "
                             "directory: pass --model-repository or SERVE_MODEL_REPOSITORY")


def _check_port(name: str, value: int, allow_zero: bool) -> None:
    low = 0 if allow_zero else 1
    if not low <= value <= 65535:
        raise ValueError(f"{name} must be in {low}..65535, got {value!r}")


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {text!r}")


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


# (field, type converter, help). Flags are the field names with dashes.
_OPTIONS: tuple[tuple[str, object, str], ...] = (
    ("model_repository", Path, "model repository folder (Triton layout)"),
    ("grpc_host", str, "address the gRPC server binds"),
    ("grpc_port", int, "gRPC port (0 picks a free one)"),
    ("metrics_host", str, "address the Prometheus /metrics endpoint binds"),
    ("metrics_port", int, "Prometheus port (0 picks a free one)"),
    ("metrics_enabled", _bool, "serve Prometheus /metrics (false switches it off)"),
    ("http_host", str, "address the KServe v2 REST port (and web console) binds"),
    ("http_port", int, "KServe v2 REST port (0 picks a free one)"),
    ("http_enabled", _bool, "serve KServe v2 REST and the console (false switches it off)"),
    ("http_body_read_timeout_s", float, "seconds a REST client has to send a whole request "
     "body; then 408 and the connection closes (0 = no limit)"),
    ("http_header_read_timeout_s", float, "seconds a REST client has to send a request's "
     "headers, from their first byte; then 408 (0 = no limit)"),
    ("http_keepalive_timeout_s", float, "close a REST connection idle this long (0 = never)"),
    ("intra_op_threads", int, "ONNX Runtime intra-op threads per model (0 = ORT default)"),
    ("ort_spinning", _bool, "let ONNX Runtime pool threads busy-wait between runs"),
    ("use_gpu", _bool, "use the CUDA execution provider when available"),
    ("drain_timeout_s", float, "seconds to finish in-flight work after SIGTERM"),
    ("max_message_bytes", int, "largest gRPC message accepted or sent"),
    ("max_inflight_request_bytes", int, "inference request bytes held at once; more are "
     "refused with RESOURCE_EXHAUSTED"),
    ("grpc_max_concurrent_streams", int, "HTTP/2 streams (calls) at once per connection"),
    ("grpc_max_connection_idle_s", float, "close a connection idle this long (0 = never)"),
    ("grpc_max_connection_age_s", float, "close connections this old, gracefully (0 = never)"),
    ("grpc_max_connection_age_grace_s", float, "calls' time to finish on an aged connection"),
    ("grpc_keepalive_time_s", float, "ping a silent client after this long (0 = never)"),
    ("grpc_keepalive_timeout_s", float, "close the connection when a ping is not answered "
     "this fast"),
    ("grpc_frontend", str, "auto | native | grpcio: who serves the gRPC port (native: "
     "pygrpc-native, batch-first, no TLS; auto: native unless TLS is set)"),
    ("model_control_mode", str, "none | explicit | poll"),
    ("repository_poll_interval_s", float, "seconds between repository scans in poll mode"),
    ("startup_models", _csv, "comma-separated models to load at start in explicit mode"),
    ("log_format", str, "text | json"),
    ("log_level", str, "DEBUG | INFO | WARNING | ERROR"),
    ("access_log", _bool, "log one line per request (never its payload)"),
    ("drift_enabled", _bool, "measure drift against each model version's reference.json"),
    ("drift_window_rows", int, "drift window: about the last this many rows per version"),
    ("drift_window_s", float, "drift window: rows older than this many seconds age out"),
    ("drift_max_rows_per_s", float, "rows a second per version that drift measures; above "
     "it, a sample of the batches (0 = every row)"),
    ("response_cache_bytes", int, "response cache size in bytes for models with "
     "response_cache { enable: true } (0 = off; per worker)"),
    ("tls_cert_file", Path, "PEM certificate chain: serve gRPC over TLS"),
    ("tls_key_file", Path, "PEM private key for --tls-cert-file"),
    ("tls_client_ca_file", Path, "PEM CA bundle: require client certificates (mutual TLS)"),
    ("repository_api_key", str, "'header:secret' that repository load/unload callers must send"),
    ("workers", int, "serving processes on the one gRPC port: 1 = this process, N >= 2 = a "
     "supervisor and N workers (SO_REUSEPORT), 0 = one per CPU"),
    ("worker_hang_timeout_s", float, "seconds a worker may stop answering before the "
     "supervisor kills and restarts it (0 = never)"),
)
# Set by the supervisor for the workers it spawns; not shown in --help, no environment.
_HIDDEN: tuple[tuple[str, object], ...] = (
    ("worker_index", int), ("worker_dir", Path), ("worker_count", int))


def _shown(value) -> str:
    """A default as a user would type it (argparse's own help shows None here)."""
    if value is None or value == () or value == "":
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value).replace("%", "%%")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m server",
        description="KServe v2 / Triton-protocol gRPC inference server for ONNX models. "
                    "Every flag can also be set as SERVE_<FLAG_NAME> in the environment.")
    defaults = {f.name: f.default for f in fields(ServerConfig)}
    for name, kind, help_text in _OPTIONS:
        default = _shown(defaults[name])
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=kind,
                            default=None, help=f"{help_text} (default: {default}; env "
                                               f"SERVE_{name.upper()})")
    for name, kind in _HIDDEN:
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None,
                            help=argparse.SUPPRESS)
    return parser


def load_config(argv: Sequence[str] | None = None,
                environ: Mapping[str, str] | None = None) -> ServerConfig:
    """Flags, then ``SERVE_*`` environment variables, then defaults; validated."""
    environ = os.environ if environ is None else environ
    args = vars(build_parser().parse_args(argv))
    converters = {name: kind for name, kind, _ in _OPTIONS}
    values: dict[str, object] = {}
    known = {f.name for f in fields(ServerConfig)}
    for name, value in args.items():
        if name not in known:
            continue
        if value is None and name in converters:
            env_value = environ.get("SERVE_" + name.upper())
            if env_value is None:
                continue
            try:
                value = converters[name](env_value)
            except (ValueError, argparse.ArgumentTypeError) as exc:
                raise ValueError(f"SERVE_{name.upper()}={env_value!r}: {exc}") from None
        if value is None:
            continue
        values[name] = value
    return ServerConfig(**values)


def grpc_frontend(config: ServerConfig) -> str:
    """The face that serves the public gRPC port: "native" or "grpcio"."""
    if config.grpc_frontend != "auto":
        return config.grpc_frontend
    return "grpcio" if config.tls_cert_file is not None else "native"


def effective_workers(config: ServerConfig) -> int:
    """Worker processes to run: ``workers``, or one per usable CPU when it is 0."""
    if config.workers:
        return config.workers
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)
