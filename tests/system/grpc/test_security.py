"""Security: repository confinement, message size limit, TLS, mutual TLS, API key, bind address.

Every test runs a real server on a real port. Certificates are made here with the
``cryptography`` package: a CA, a server certificate for 127.0.0.1, a client
certificate from the same CA and one from a stranger CA.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from server.protocol import grpc_service_pb2 as pb
from server.protocol import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import ServerProcess
from tests.support.loadkit import MnistReference, copy_mnist, mnist_request, output_array, stub

API_HEADER, API_SECRET = "x-api-key", "s3cret-Key"
MAX_MESSAGE = 256 * 1024
MNIST_BATCHING = "max_queue_delay_microseconds: 0"


# ---- fixtures ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def repos(models_dir, tmp_path_factory) -> tuple[Path, Path]:
    """A repository with mnist and a symlink ``evil`` to a model folder outside it."""
    root = tmp_path_factory.mktemp("security")
    repo, outside = root / "repo", root / "outside"
    copy_mnist(models_dir, repo, MNIST_BATCHING)
    copy_mnist(models_dir, outside, MNIST_BATCHING, name="evil")
    (repo / "evil").symlink_to(outside / "evil", target_is_directory=True)
    return repo, outside


@pytest.fixture(scope="module")
def locked_server(repos):
    """Explicit model control, an API key on load/unload, a small message limit."""
    proc = ServerProcess(repos[0], "--model-control-mode", "explicit",
                         "--startup-models", "mnist",
                         "--repository-api-key", f"{API_HEADER}:{API_SECRET}",
                         "--max-message-bytes", str(MAX_MESSAGE))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def locked_stub(locked_server):
    return stub(locked_server.address)


KEY = ((API_HEADER, API_SECRET),)


def _code(call, *args, **kwargs) -> tuple[grpc.StatusCode, str]:
    try:
        call(*args, timeout=30, **kwargs)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


# ---- repository confinement --------------------------------------------------------------
ESCAPES = ["..", "../x", "../outside/evil", "/etc", "/etc/passwd", "a/b", "mnist/..",
           "mnist/../mnist", "%2e%2e", "%2e%2e%2fetc", "..%2f", ".", "", "\\..\\x",
           "mnist\x00", "~", "-rf", "a" * 300, "evil"]


@pytest.mark.parametrize("name", ESCAPES)
def test_load_outside_the_repository_is_refused(locked_stub, locked_server, name):
    code, message = _code(locked_stub.RepositoryModelLoad,
                          pb.RepositoryModelLoadRequest(model_name=name), metadata=KEY)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (name, code, message)
    assert message, name
    # Nothing from outside got loaded under any name.
    assert not locked_stub.ModelReady(pb.ModelReadyRequest(name=name), timeout=10).ready


@pytest.mark.parametrize("name", ["..", "../x", "/etc", "a/b", "%2e%2e", "evil"])
def test_unload_outside_the_repository_is_refused(locked_stub, name):
    code, message = _code(locked_stub.RepositoryModelUnload,
                          pb.RepositoryModelUnloadRequest(model_name=name), metadata=KEY)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (name, code, message)


def test_symlink_out_of_the_repository_is_not_listed_or_loaded(locked_stub, locked_server):
    index = locked_stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=10)
    names = {row.name for row in index.models}
    assert "mnist" in names and "evil" not in names, names
    code, message = _code(locked_stub.RepositoryModelLoad,
                          pb.RepositoryModelLoadRequest(model_name="evil"), metadata=KEY)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "outside" in message, message
    # The control: a real model in the repository does load with the key.
    code, message = _code(locked_stub.RepositoryModelLoad,
                          pb.RepositoryModelLoadRequest(model_name="mnist"), metadata=KEY)
    assert code == grpc.StatusCode.OK, message


def test_symlinked_version_folder_or_config_leading_out_is_refused(models_dir, tmp_path):
    """Inside a real model folder, a version or config.pbtxt symlinked out is not followed."""
    repo, outside = tmp_path / "repo", tmp_path / "outside"
    copy_mnist(models_dir, repo, MNIST_BATCHING)
    copy_mnist(models_dir, outside, MNIST_BATCHING, name="elsewhere")
    (repo / "mnist" / "7").symlink_to(outside / "elsewhere" / "1", target_is_directory=True)
    copy_mnist(models_dir, repo, MNIST_BATCHING, name="linked")
    (repo / "linked" / "config.pbtxt").unlink()
    (repo / "linked" / "config.pbtxt").symlink_to(outside / "elsewhere" / "config.pbtxt")
    proc = ServerProcess(repo, "--model-control-mode", "explicit", "--startup-models", "mnist")
    try:
        client = stub(proc.address)
        meta = client.ModelMetadata(pb.ModelMetadataRequest(name="mnist"), timeout=10)
        assert list(meta.versions) == ["1"]  # version 7 leads out: not served
        code, message = _code(client.RepositoryModelLoad,
                              pb.RepositoryModelLoadRequest(model_name="linked"))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "outside" in message, message
    finally:
        proc.stop()
    assert "leads outside the repository" in proc.log


# ---- API key on repository control -------------------------------------------------------
@pytest.mark.parametrize("metadata", [None, ((API_HEADER, "wrong"),), ((API_HEADER, ""),),
                                      (("x-other-key", API_SECRET),),
                                      ((API_HEADER, API_SECRET + "x"),)],
                         ids=["none", "wrong", "empty", "other-header", "longer"])
def test_repository_control_needs_the_key(locked_stub, metadata):
    for call, request in ((locked_stub.RepositoryModelLoad,
                           pb.RepositoryModelLoadRequest(model_name="mnist")),
                          (locked_stub.RepositoryModelUnload,
                           pb.RepositoryModelUnloadRequest(model_name="mnist"))):
        code, message = _code(call, request, metadata=metadata)
        assert code == grpc.StatusCode.PERMISSION_DENIED, (metadata, code, message)
        assert API_SECRET not in message
    # Refused unload left the model serving.
    assert locked_stub.ModelReady(pb.ModelReadyRequest(name="mnist"), timeout=10).ready


def test_repository_control_with_the_key_works(locked_stub, models_dir):
    unload = pb.RepositoryModelUnloadRequest(model_name="mnist")
    assert _code(locked_stub.RepositoryModelUnload, unload, metadata=KEY)[0] == \
        grpc.StatusCode.OK
    assert not locked_stub.ModelReady(pb.ModelReadyRequest(name="mnist"), timeout=10).ready
    load = pb.RepositoryModelLoadRequest(model_name="mnist")
    assert _code(locked_stub.RepositoryModelLoad, load, metadata=KEY)[0] == grpc.StatusCode.OK
    assert locked_stub.ModelReady(pb.ModelReadyRequest(name="mnist"), timeout=10).ready
    # Inference never needs the key.
    images = np.random.default_rng(1).random((2, 28, 28, 1), dtype=np.float32)
    reply = locked_stub.ModelInfer(mnist_request(images), timeout=30)
    np.testing.assert_allclose(output_array(reply, "probabilities"),
                               MnistReference(models_dir)(images), rtol=1e-4, atol=1e-5)


# ---- message size ------------------------------------------------------------------------
def test_request_over_max_message_bytes_is_refused_and_server_keeps_serving(locked_stub,
                                                                           locked_server):
    too_big = np.zeros((96, 28, 28, 1), np.float32)  # 301 KB > 256 KiB
    assert too_big.nbytes > MAX_MESSAGE
    code, message = _code(locked_stub.ModelInfer, mnist_request(too_big))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, message)
    assert message.startswith("SERVER: Received message larger than max ("), message
    fits = np.zeros((64, 28, 28, 1), np.float32)  # 200 KB
    reply = locked_stub.ModelInfer(mnist_request(fits), timeout=30)
    assert output_array(reply, "probabilities").shape == (64, 10)
    assert locked_server.proc.poll() is None


# ---- metrics bind address ----------------------------------------------------------------
def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a LISTEN socket on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            host, _, port_hex = local.partition(":")
            if state == "0A" and int(port_hex, 16) == port:
                found.add(host)
    return found


def test_metrics_binds_the_host_it_is_given(locked_server):
    if locked_server.metrics_port is None:
        pytest.skip("this server build prints no 'metrics listening' line: no /metrics yet")
    port = locked_server.metrics_port
    # 127.0.0.1 in /proc/net/tcp's little-endian hex; never the wildcard 0.0.0.0 or ::.
    assert _listening_addresses(port) == {"0100007F"}, _listening_addresses(port)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        assert b"onnxserve_" in response.read()


# ---- TLS and mutual TLS ------------------------------------------------------------------
@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: bytes
    client_key: bytes
    stranger_cert: bytes  # a client certificate from a CA the server does not trust
    stranger_key: bytes
    stranger_ca: bytes


def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert(subject: str, key, issuer_name, issuer_key, *, ca: bool, server: bool = False):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (x509.CertificateBuilder().subject_name(name)
               .issuer_name(issuer_name or name).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    if not ca:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


def _pem(cert) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    pytest.importorskip("cryptography", reason="the dev extra installs cryptography")
    root = tmp_path_factory.mktemp("pki")
    ca_key, stranger_ca_key = _key(), _key()
    ca = _cert("onnx-serve test CA", ca_key, None, None, ca=True)
    stranger_ca = _cert("stranger CA", stranger_ca_key, None, None, ca=True)
    server_key, client_key, stranger_key = _key(), _key(), _key()
    server = _cert("127.0.0.1", server_key, ca.subject, ca_key, ca=False, server=True)
    client = _cert("client", client_key, ca.subject, ca_key, ca=False)
    stranger = _cert("stranger", stranger_key, stranger_ca.subject, stranger_ca_key, ca=False)
    paths = {"ca.pem": _pem(ca), "server.pem": _pem(server),
             "server.key": _pem_key(server_key)}
    for name, data in paths.items():
        (root / name).write_bytes(data)
    (root / "server.key").chmod(0o600)
    return Pki(root / "ca.pem", root / "server.pem", root / "server.key", _pem(client),
               _pem_key(client_key), _pem(stranger), _pem_key(stranger_key),
               _pem(stranger_ca))


def _ready_over(channel: grpc.Channel) -> tuple[grpc.StatusCode, bool]:
    try:
        reply = pb_grpc.GRPCInferenceServiceStub(channel).ServerReady(
            pb.ServerReadyRequest(), timeout=5)
        return grpc.StatusCode.OK, reply.ready
    except grpc.RpcError as exc:
        return exc.code(), False
    finally:
        channel.close()


def _tls_channel(address: str, root: bytes, cert: bytes | None = None,
                 key: bytes | None = None) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(root_certificates=root, private_key=key,
                                               certificate_chain=cert)
    return grpc.secure_channel(address, credentials)


def test_tls_server_accepts_tls_and_refuses_plaintext(repos, pki):
    proc = ServerProcess(repos[0], "--tls-cert-file", str(pki.server_cert),
                         "--tls-key-file", str(pki.server_key))
    try:
        assert any("(TLS)" in line for line in proc.lines), proc.log
        ca = pki.ca.read_bytes()
        assert _ready_over(_tls_channel(proc.address, ca)) == (grpc.StatusCode.OK, True)
        code, _ = _ready_over(grpc.insecure_channel(proc.address))
        assert code == grpc.StatusCode.UNAVAILABLE, code
        # A client that does not trust the server's CA refuses the connection.
        code, _ = _ready_over(_tls_channel(proc.address, pki.stranger_ca))
        assert code == grpc.StatusCode.UNAVAILABLE, code
        # Inference over TLS works end to end.
        channel = _tls_channel(proc.address, ca)
        images = np.ones((1, 28, 28, 1), np.float32)
        reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(mnist_request(images),
                                                                     timeout=30)
        assert output_array(reply, "probabilities").shape == (1, 10)
        channel.close()
    finally:
        proc.stop()


def test_mutual_tls_needs_a_client_certificate_from_the_ca(repos, pki):
    proc = ServerProcess(repos[0], "--tls-cert-file", str(pki.server_cert),
                         "--tls-key-file", str(pki.server_key),
                         "--tls-client-ca-file", str(pki.ca))
    try:
        ca = pki.ca.read_bytes()
        code, _ = _ready_over(_tls_channel(proc.address, ca))
        assert code == grpc.StatusCode.UNAVAILABLE, f"no client certificate: {code}"
        code, _ = _ready_over(_tls_channel(proc.address, ca, pki.stranger_cert,
                                           pki.stranger_key))
        assert code == grpc.StatusCode.UNAVAILABLE, f"stranger's certificate: {code}"
        code, _ = _ready_over(grpc.insecure_channel(proc.address))
        assert code == grpc.StatusCode.UNAVAILABLE, f"plaintext: {code}"
        assert _ready_over(_tls_channel(proc.address, ca, pki.client_cert, pki.client_key)) \
            == (grpc.StatusCode.OK, True)
        assert proc.proc.poll() is None
    finally:
        proc.stop()
