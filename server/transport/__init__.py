"""gRPC transport: wire <-> domain conversion, status mapping, servicers, server assembly."""
