"""The client API: talk to a KServe v2 gRPC server (this one, or Triton) from Python.

    from server.client import connect, image_request, text_request, output_array

    with connect("localhost:8001") as conn:           # "grpcs://host:port" or ca_file= for TLS
        conn.server_ready()                            # True / False
        reply = conn.infer(text_request("sentiment", ["a wonderful film"]))
        print(output_array(reply, "probability"))      # float32 (1, 1)

Every failure a caller should show a person is a :class:`ClientError` whose message is
one clear line (unreachable server, deadline, the server's own status and details).

Imports: ``grpc``, ``numpy``, ``server.protocol`` (the generated KServe v2 stubs) and
this package only, never another ``server`` subpackage, so that the client (and the
tools built on it) depend on the wire contract and not on the server's internals.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import grpc
import numpy as np

from server.protocol import grpc_service_pb2 as pb
from server.protocol import grpc_service_pb2_grpc as pb_grpc

__all__ = ["DEFAULT_URL", "DEFAULT_TIMEOUT_S", "ClientError", "Connection", "connect",
           "describe_rpc_error", "image_request", "text_request", "encode_bytes",
           "decode_bytes", "output_array", "output_arrays"]

DEFAULT_URL = "localhost:8001"
DEFAULT_TIMEOUT_S = 10.0

_LENGTH = struct.Struct("<I")  # KServe v2 BYTES: each element is a uint32 LE length + data
# KServe v2 datatype -> (numpy dtype, the typed InferTensorContents field holding it).
_DATATYPES: dict[str, tuple[Any, str | None]] = {
    "BOOL": (np.bool_, "bool_contents"),
    "INT8": (np.int8, "int_contents"), "INT16": (np.int16, "int_contents"),
    "INT32": (np.int32, "int_contents"), "INT64": (np.int64, "int64_contents"),
    "UINT8": (np.uint8, "uint_contents"), "UINT16": (np.uint16, "uint_contents"),
    "UINT32": (np.uint32, "uint_contents"), "UINT64": (np.uint64, "uint64_contents"),
    "FP16": (np.float16, None), "FP32": (np.float32, "fp32_contents"),
    "FP64": (np.float64, "fp64_contents"),
}


class ClientError(Exception):
    """A failure worth one clear line to the user."""


# ---- connecting ------------------------------------------------------------------------
@dataclass
class Connection:
    """A channel to one server and its KServe v2 stub; every call has ``timeout_s``.

    The calls turn ``grpc.RpcError`` into :class:`ClientError`. ``stub`` is there for
    any other RPC (statistics, repository control) with plain grpc errors.
    """

    url: str
    timeout_s: float
    stub: pb_grpc.GRPCInferenceServiceStub
    channel: grpc.Channel | None = None

    def infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        return self._call(self.stub.ModelInfer, request)

    def server_live(self) -> bool:
        return self._call(self.stub.ServerLive, pb.ServerLiveRequest()).live

    def server_ready(self) -> bool:
        return self._call(self.stub.ServerReady, pb.ServerReadyRequest()).ready

    def model_ready(self, model: str, version: str = "") -> bool:
        return self._call(self.stub.ModelReady,
                          pb.ModelReadyRequest(name=model, version=version)).ready

    def server_metadata(self) -> pb.ServerMetadataResponse:
        return self._call(self.stub.ServerMetadata, pb.ServerMetadataRequest())

    def model_metadata(self, model: str, version: str = "") -> pb.ModelMetadataResponse:
        return self._call(self.stub.ModelMetadata,
                          pb.ModelMetadataRequest(name=model, version=version))

    def services(self) -> dict[str, list[str]]:
        """Every service the server lists through gRPC server reflection, with its
        methods ("Name(Request) returns (Reply)"): ``grpcurl list``/``describe`` in Python."""
        from google.protobuf.descriptor_pool import DescriptorPool
        from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
            ProtoReflectionDescriptorDatabase)

        database = ProtoReflectionDescriptorDatabase(self.channel)
        pool = DescriptorPool(database)
        try:
            names = database.get_services()
            found = {}
            for name in names:
                service = pool.FindServiceByName(name)
                found[name] = [f"{m.name}({_streamed(m.client_streaming)}{m.input_type.name}) "
                               f"returns ({_streamed(m.server_streaming)}{m.output_type.name})"
                               for m in service.methods]
            return found
        except grpc.RpcError as exc:
            raise ClientError(describe_rpc_error(exc, self.url, self.timeout_s)) from None

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method, request):
        try:
            return method(request, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise ClientError(describe_rpc_error(exc, self.url, self.timeout_s)) from None


def _streamed(streaming: bool) -> str:
    return "stream " if streaming else ""


def connect(url: str = DEFAULT_URL, timeout_s: float = DEFAULT_TIMEOUT_S,
            ca_file: Path | None = None,
            options: Sequence[tuple[str, Any]] = ()) -> Connection:
    """A :class:`Connection` to ``host:port``; TLS for ``grpcs://host:port`` or a
    ``ca_file`` (PEM roots to verify the server; without one, the system's roots).

    No RPC is made here: an unreachable server shows at the first call. ``options``
    are grpc channel arguments, e.g. ``[("grpc.max_send_message_length", 1 << 27)]``.
    """
    target = url.split("://", 1)[-1].rstrip("/")
    if ca_file is not None or url.startswith("grpcs://"):
        try:
            roots = Path(ca_file).read_bytes() if ca_file else None
        except OSError as exc:
            raise ClientError(f"cannot read --ca-file {str(ca_file)!r}: {exc.strerror}") from None
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(roots),
                                      options=list(options))
    else:
        channel = grpc.insecure_channel(target, options=list(options))
    return Connection(url, timeout_s, pb_grpc.GRPCInferenceServiceStub(channel), channel)


def describe_rpc_error(exc: grpc.RpcError, url: str, timeout_s: float) -> str:
    """One line for a person: unreachable, too slow, or what the server answered."""
    code, details = exc.code(), (exc.details() or "").strip()
    if code == grpc.StatusCode.UNAVAILABLE and _unreachable(details):
        reason = details.splitlines()[0].rsplit(":", 1)[-1].strip(" ]") if details else "no reply"
        return f"cannot reach server at {url}: is it running? ({reason})"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"no answer from {url} within {timeout_s:g} s (raise --timeout?)"
    return f"server at {url} answered {code.name}: {details}"


def _unreachable(details: str) -> bool:
    lowered = details.lower()
    return any(s in lowered for s in ("connect", "dns", "resolv", "lookup", "unreachable", "refused"))


# ---- requests --------------------------------------------------------------------------
def image_request(model: str, images: np.ndarray, *, name: str = "image",
                  request_id: str = "") -> pb.ModelInferRequest:
    """One FP32 input (e.g. mnist's ``(N, 28, 28, 1)`` in [0, 1]) sent as raw bytes."""
    images = np.ascontiguousarray(images, dtype=np.float32)
    request = pb.ModelInferRequest(model_name=model, id=request_id)
    request.inputs.add(name=name, datatype="FP32", shape=list(images.shape))
    request.raw_input_contents.append(images.tobytes())
    return request


def text_request(model: str, texts: Sequence[str | bytes], *, name: str = "text",
                 raw: bool = True, request_id: str = "") -> pb.ModelInferRequest:
    """One BYTES input of shape ``[len(texts), 1]``; ``str`` is sent as UTF-8.

    ``raw`` (the default) sends the elements length-prefixed in ``raw_input_contents``;
    ``raw=False`` sends them in the typed ``bytes_contents`` field instead.
    """
    items = [t.encode("utf-8") if isinstance(t, str) else bytes(t) for t in texts]
    request = pb.ModelInferRequest(model_name=model, id=request_id)
    tensor = request.inputs.add(name=name, datatype="BYTES", shape=[len(items), 1])
    if raw:
        request.raw_input_contents.append(encode_bytes(items))
    else:
        tensor.contents.bytes_contents.extend(items)
    return request


def encode_bytes(items: Iterable[str | bytes]) -> bytes:
    """KServe v2 raw BYTES: each element as a little-endian uint32 length, then its data."""
    parts = []
    for item in items:
        data = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        parts += [_LENGTH.pack(len(data)), data]
    return b"".join(parts)


def decode_bytes(data: bytes) -> list[bytes]:
    """The elements of raw BYTES data (the inverse of :func:`encode_bytes`)."""
    items, offset = [], 0
    while offset < len(data):
        if offset + _LENGTH.size > len(data):
            raise ClientError(f"BYTES data ends inside an element's length at byte {offset}")
        (length,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size
        if offset + length > len(data):
            raise ClientError(f"a BYTES element of {length} bytes runs past the data's end")
        items.append(bytes(data[offset:offset + length]))
        offset += length
    return items


# ---- replies ---------------------------------------------------------------------------
def output_array(response: pb.ModelInferResponse, name: str) -> np.ndarray:
    """The output ``name`` as a numpy array of its shape (raw or typed contents).

    Numeric datatypes give that dtype (FP32 when the server names none); BYTES gives an
    object array of ``bytes``.
    """
    for index, tensor in enumerate(response.outputs):
        if tensor.name == name:
            raw = (response.raw_output_contents[index]
                   if index < len(response.raw_output_contents) else None)
            return _tensor_array(tensor, raw)
    names = [t.name for t in response.outputs]
    raise ClientError(f"the server's answer has no output {name!r} (it sent {names}); "
                      "is this the right model?")


def output_arrays(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """Every output of a reply, by name."""
    return {tensor.name: output_array(response, tensor.name) for tensor in response.outputs}


def _tensor_array(tensor, raw: bytes | None) -> np.ndarray:
    shape = tuple(tensor.shape)
    if tensor.datatype == "BYTES":
        items = decode_bytes(raw) if raw is not None else list(tensor.contents.bytes_contents)
        array = np.empty(len(items), dtype=object)
        array[:] = items
        return _reshape(array, shape, tensor.name)
    dtype, field = _DATATYPES.get(tensor.datatype, (np.float32, "fp32_contents"))
    if raw is not None:
        if len(raw) % np.dtype(dtype).itemsize:
            raise ClientError(f"output {tensor.name!r}: {len(raw)} bytes are not whole "
                              f"{tensor.datatype or 'FP32'} values")
        return _reshape(np.frombuffer(raw, dtype=dtype), shape, tensor.name)
    values = getattr(tensor.contents, field) if field else []
    return _reshape(np.asarray(values, dtype=dtype), shape, tensor.name)


def _reshape(array: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    try:
        return array.reshape(shape)
    except ValueError:
        raise ClientError(f"output {name!r}: {array.size} values do not fill its shape "
                          f"{list(shape)}") from None
