# syntax=docker/dockerfile:1.7
#
# onnx-serve: the gRPC inference server and the committed model repository, no TensorFlow.
#
#   CPU (default):  docker build -t onnx-serve:cpu .
#   GPU:            docker build -t onnx-serve:gpu --build-arg VARIANT=gpu \
#                     --build-arg BASE_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04 .
#   Run:            docker run --rm -p 8001:8001 -p 8002:8002 -p 8000:8000 --stop-timeout 40 onnx-serve:cpu
#
# Networks behind a TLS-intercepting proxy: pass the CA bundle as a build secret (never
# baked into a layer): --secret id=pipca,src=/etc/ssl/certs/ca-certificates.crt
# tools/container_test.sh builds this file offline-from-registries (see docs/deploy.md).

# Any image with Debian/Ubuntu apt, or one that already has python3 (>= 3.11) with the
# venv module and tini. The GPU variant needs a CUDA 13 + cuDNN 9 *runtime* image.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS builder
# cpu: onnxruntime (from pyproject's core dependencies); gpu: onnxruntime-gpu instead.
ARG VARIANT=cpu
# Overrides the `gpu` extra's onnxruntime-gpu requirement, e.g. a pinned version.
ARG ORT_GPU_REQUIREMENT=
# Optional package index settings (a mirror, or a feed with CUDA-specific wheels). No
# defaults on purpose: an ARG without one stays unset, so pip keeps its own defaults.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_DEFAULT_TIMEOUT=120 \
    PYTHONDONTWRITEBYTECODE=1

# python3 and its venv module from the distribution when the base lacks them
# (nvidia/cuda images ship none; python:*-slim and our Debian base have both).
RUN set -eu; \
    if ! python3 -c "import venv, ensurepip" 2>/dev/null; then \
        apt-get update; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            python3 python3-venv ca-certificates; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    python3 -c 'import sys; assert sys.version_info >= (3, 11), sys.version'

# Two environments: /opt/venv is what the image ships (no pip, no setuptools: the
# runtime installs nothing); /opt/tools holds the pip that fills it (`--python`).
RUN python3 -m venv --without-pip /opt/venv && python3 -m venv /opt/tools
ENV PIP="/opt/tools/bin/pip"

# Dependencies first, in their own layer: it survives edits to the server's source, and
# so does the runtime's copy of /opt/venv (the largest layer, about 200 MB).
# The requirement list comes from pyproject.toml's core dependencies only, so the
# `train` extra (TensorFlow) cannot reach the image.
WORKDIR /src
COPY pyproject.toml ./
COPY tools/container/requirements.py /tmp/requirements.py
RUN --mount=type=secret,id=pipca \
    --mount=type=cache,target=/root/.cache/pip \
    set -eu; \
    if [ -s /run/secrets/pipca ]; then export PIP_CERT=/run/secrets/pipca; fi; \
    python3 /tmp/requirements.py --variant "$VARIANT" \
        --gpu-requirement "$ORT_GPU_REQUIREMENT" pyproject.toml > /tmp/requirements.txt; \
    $PIP --python /opt/venv/bin/python install -r /tmp/requirements.txt

# The project itself, into /opt/app (a small layer of its own; PYTHONPATH in the
# runtime), byte-compiled since the runtime user cannot write there: the `server`
# package only, since training/ is not copied and setuptools' discovery finds no other.
COPY server ./server
RUN --mount=type=secret,id=pipca \
    --mount=type=cache,target=/root/.cache/pip \
    set -eu; \
    if [ -s /run/secrets/pipca ]; then export PIP_CERT=/run/secrets/pipca; fi; \
    $PIP install --no-deps --target /opt/app . ; \
    rm -rf /opt/app/bin; \
    /opt/venv/bin/python -m compileall -q /opt/app; \
    if PYTHONPATH=/opt/app /opt/venv/bin/python -c "import tensorflow" 2>/dev/null; then \
        echo "tensorflow must not be in the serving image" >&2; exit 1; \
    fi; \
    PYTHONPATH=/opt/app /opt/venv/bin/python -c "import server.app, onnxruntime"

# ---------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime
ARG VARIANT=cpu

# python3 (the venv's interpreter is the base image's) and tini (PID 1: forwards SIGTERM
# to the server and reaps zombies), from the distribution when the base lacks them.
RUN set -eu; \
    missing=""; \
    command -v python3 >/dev/null || missing="$missing python3"; \
    [ -x /usr/bin/tini ] || missing="$missing tini"; \
    if [ -n "$missing" ]; then \
        apt-get update; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    if [ "$VARIANT" = gpu ] && ! ldconfig -p | grep -q 'libcudnn\.so\.9'; then \
        echo "VARIANT=gpu needs a CUDA 13 + cuDNN 9 runtime base image, e.g." \
             "BASE_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04" >&2; \
        exit 1; \
    fi; \
    groupadd --system --gid 10001 serve; \
    useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin serve

COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/app /opt/app
# The committed repository; mount another one over /models (read-only is enough).
# --chmod: readable by the non-root user even from a checkout made with umask 077.
COPY --chmod=0755 models /models

LABEL org.opencontainers.image.title="onnx-serve" \
      org.opencontainers.image.description="KServe v2 / Triton-protocol gRPC inference server for ONNX models" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.onnx-serve.variant="${VARIANT}"

# Every server flag is also a SERVE_* variable; these are the container's defaults.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/opt/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SERVE_MODEL_REPOSITORY=/models \
    SERVE_GRPC_HOST=0.0.0.0 \
    SERVE_GRPC_PORT=8001 \
    SERVE_METRICS_HOST=0.0.0.0 \
    SERVE_METRICS_PORT=8002 \
    SERVE_HTTP_HOST=0.0.0.0 \
    SERVE_HTTP_PORT=8000 \
    SERVE_DRAIN_TIMEOUT_S=30

# A numeric user, so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
USER 10001:10001
WORKDIR /
EXPOSE 8001 8002 8000

# Healthy = grpc.health.v1 says SERVING (models loaded and warm, not draining).
# Honoured by Docker and by podman with --format docker; Kubernetes uses its own probes.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "server.healthcheck"]

# The server drains on SIGTERM (not ready at once, in-flight requests finish within
# SERVE_DRAIN_TIMEOUT_S) and exits 0: give `docker stop` more than that (-t 40).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["python", "-m", "server"]
