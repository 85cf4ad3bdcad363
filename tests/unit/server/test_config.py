"""Settings: flags beat SERVE_* variables beat defaults; bad values are refused, quoted."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.config import grpc_frontend, load_config


def test_flags_then_environment_then_defaults(tmp_path):
    env = {"SERVE_GRPC_PORT": "9100", "SERVE_ACCESS_LOG": "true", "SERVE_METRICS_PORT": "9200"}
    config = load_config(["--model-repository", str(tmp_path), "--grpc-port", "9001"], env)
    assert config.grpc_port == 9001  # the flag wins
    assert config.metrics_port == 9200 and config.access_log is True  # from the environment
    assert config.drain_timeout_s == 30.0 and config.model_repository == Path(tmp_path)


@pytest.mark.parametrize("args, env, fragment", [
    (["--grpc-port", "70000"], {}, "70000"),
    (["--model-control-mode", "sometimes"], {}, "'sometimes'"),
    (["--tls-cert-file", "cert.pem"], {}, "both tls_cert_file and tls_key_file"),
    ([], {"SERVE_INTRA_OP_THREADS": "many"}, "SERVE_INTRA_OP_THREADS='many'"),
    ([], {"SERVE_ACCESS_LOG": "perhaps"}, "'perhaps'"),
    (["--repository-api-key", "no-colon"], {}, "header-name:secret"),
    (["--max-message-bytes", "10"], {}, "10"),
    (["--grpc-frontend", "tonic"], {}, "'tonic'"),
    ([], {"SERVE_GRPC_FRONTEND": "fast"}, "'fast'"),
    (["--grpc-frontend", "native", "--tls-cert-file", "c.pem", "--tls-key-file", "k.pem"], {},
     "'native' has no TLS"),
])
def test_bad_settings_are_refused_with_the_value(tmp_path, args, env, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(")):
        load_config(["--model-repository", str(tmp_path), *args], env)


def test_missing_repository_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        load_config(["--model-repository", str(tmp_path / "nope")], {})


def test_help_shows_every_default():
    from server.config import build_parser

    text = " ".join(build_parser().format_help().split())  # undo argparse's wrapping
    for fragment in ("(default: 8001;", "(default: 0.0.0.0;", "(default: models;",
                     "(default: 268435456;", "(default: 1024;", "(default: false;",
                     "(default: unset;"):
        assert fragment in text, fragment


@pytest.mark.parametrize("args, env, face", [
    ([], {}, "native"),  # auto: the native face where it can serve the configuration
    (["--tls-cert-file", "c.pem", "--tls-key-file", "k.pem"], {}, "grpcio"),  # auto + TLS
    ([], {"SERVE_GRPC_FRONTEND": "grpcio"}, "grpcio"),
    (["--grpc-frontend", "native"], {"SERVE_GRPC_FRONTEND": "grpcio"}, "native"),
])
def test_grpc_frontend_native_unless_tls_or_asked(tmp_path, args, env, face):
    config = load_config(["--model-repository", str(tmp_path), *args], env)
    assert grpc_frontend(config) == face
