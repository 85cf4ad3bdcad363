"""onnx-serve: a KServe v2 / Triton-protocol gRPC inference server for ONNX models."""

__version__ = "0.1.0"
