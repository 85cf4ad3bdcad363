#!/usr/bin/env bash
# Regenerate the Python protobuf/gRPC stubs in server/protocol/ from the
# .proto files in proto/server/protocol/. The output is committed; run this
# after every .proto change (tests/unit/protocol/test_protocol.py checks the stubs
# are in sync). Use the pinned grpcio-tools from the `dev` extra so the
# generated files are byte-identical across machines.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

"${PYTHON:-python}" -m grpc_tools.protoc \
    -I proto \
    --python_out=. \
    --pyi_out=. \
    --grpc_python_out=. \
    proto/server/protocol/model_config.proto \
    proto/server/protocol/grpc_service.proto
