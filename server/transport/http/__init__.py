"""KServe v2 REST (Triton's HTTP protocol) beside gRPC, and the web console."""
