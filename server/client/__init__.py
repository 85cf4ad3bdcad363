"""A small KServe v2 gRPC client: the public API (:mod:`server.client.api`) and, as
``python -m server.client``, a command line on top of it (:mod:`server.client.__main__`).

    from server.client import connect, image_request, text_request, output_array

Public names: :data:`DEFAULT_URL`, :data:`DEFAULT_TIMEOUT_S`, :class:`ClientError`,
:class:`Connection` (``infer``, ``server_live``, ``server_ready``, ``model_ready``,
``server_metadata``, ``model_metadata``, ``close``), :func:`connect`,
:func:`describe_rpc_error`, :func:`image_request`, :func:`text_request`,
:func:`encode_bytes`, :func:`decode_bytes`, :func:`output_array`, :func:`output_arrays`.
Reading image files (Pillow, the ``client`` extra) is :mod:`server.client.images`.

Imports: this package may import only ``grpc``, ``numpy``, ``server.protocol`` (the
generated stubs) and itself (Pillow lazily, in ``images``): never ``server.core``,
``server.kserve`` or any other server subpackage. The tools in ``tools/`` and outside
users rely on it to depend on the wire contract alone.
"""

from server.client.api import (DEFAULT_TIMEOUT_S, DEFAULT_URL, ClientError, Connection,
                               connect, decode_bytes, describe_rpc_error, encode_bytes,
                               image_request, output_array, output_arrays, text_request)

__all__ = ["DEFAULT_URL", "DEFAULT_TIMEOUT_S", "ClientError", "Connection", "connect",
           "describe_rpc_error", "image_request", "text_request", "encode_bytes",
           "decode_bytes", "output_array", "output_arrays"]
