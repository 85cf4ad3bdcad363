#!/usr/bin/env bash
# Build the serving image with podman and check it end to end, from the host:
#   health (grpc.health.v1) -> MNIST + sentiment inference (tritonclient) -> /metrics
#   -> no TensorFlow in the image -> non-root user -> SIGTERM drains and exits 0.
#
# No Docker daemon and no container registry are needed: the base image is made
# locally with debootstrap (Debian bookworm + python3 + tini), cached under .cache/ and
# as a podman image. Needs root (podman/debootstrap), podman, runc; see the Deploy section of README.md.
#
# Environment:
#   PYTHON            host interpreter with tritonclient[grpc] (default .venv/bin/python)
#   IMAGE             tag to build (default localhost/onnx-serve:test)
#   MODEL_REPOSITORY  mount this repository at /models instead of the baked-in models/
#   DEBIAN_MIRROR     debootstrap mirror (default: the first URI in /etc/apt/sources*)
#   KEEP=1            leave the container running on failure, for inspection
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-.venv/bin/python}"
IMAGE="${IMAGE:-localhost/onnx-serve:test}"
BASE_IMAGE="localhost/onnx-serve-base:bookworm"
BASE_PACKAGES="python3,python3-venv,ca-certificates,tini"
CACHE_DIR=".cache/container"
NAME="onnx-serve-test-$$"
STOP_GRACE_S=45        # > the server's drain timeout (30 s) + start of shutdown
HEALTH_TIMEOUT_S=180
PODMAN=(quiet_podman --runtime runc)
RUN_LIMITS=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024)

t_start=$(date +%s)
log() { printf '[container-test %4ss] %s\n' "$(( $(date +%s) - t_start ))" "$*"; }
die() { log "FAIL: $*"; exit 1; }

cleanup() {
    local code=$?
    if [ "$code" -ne 0 ] && "${PODMAN[@]}" container exists "$NAME" 2>/dev/null; then
        log "container log (last 40 lines):"
        "${PODMAN[@]}" logs --tail 40 "$NAME" 2>&1 | sed 's/^/    /' || true
    fi
    if [ "${KEEP:-0}" != 1 ] || [ "$code" -eq 0 ]; then
        "${PODMAN[@]}" rm -f -t 0 "$NAME" >/dev/null 2>&1 || true
    fi
    exit "$code"
}
trap cleanup EXIT

# podman wants systemd timers for HEALTHCHECKs and logs an error per container without
# systemd; harmless here (the script runs the check itself), so keep it out of the log.
quiet_podman() {
    podman "$@" 2> >(grep -v 'unable to get systemd connection' >&2)
}

require() {
    command -v "$1" >/dev/null || die "$1 is not installed: $2"
}

check_prerequisites() {
    require podman "apt-get install -y podman buildah runc fuse-overlayfs"
    require runc "apt-get install -y runc"
    [ -x "$PYTHON" ] || command -v "$PYTHON" >/dev/null \
        || die "PYTHON=$PYTHON not found: make a venv with tritonclient[grpc] (make test does)"
    "$PYTHON" -c "import tritonclient.grpc, grpc_health" 2>/dev/null \
        || die "$PYTHON lacks tritonclient[grpc] / grpcio-health-checking (the dev extra)"
    [ "$(id -u)" -eq 0 ] || die "run as root: podman with runc here and debootstrap need it"
}

debian_mirror() {
    if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
    # The host's own apt source (the mirror that is reachable from here).
    local uri
    uri=$(grep -hoE '^(URIs:|deb) +(\[[^]]*\] +)?https?://[^ ]+/debian/?( |$)' \
          /etc/apt/sources.list /etc/apt/sources.list.d/*.sources \
          /etc/apt/sources.list.d/*.list 2>/dev/null | grep -oE 'https?://[^ ]+' | head -n1)
    echo "${uri:-http://deb.debian.org/debian}"
}

# Debian bookworm + python3 (3.11) + venv + tini, imported as a podman image.
build_base_image() {
    if podman image exists "$BASE_IMAGE"; then
        log "base image $BASE_IMAGE exists (podman rmi it to rebuild)"
        return
    fi
    local tarball="$CACHE_DIR/base-bookworm.tar"
    if [ ! -s "$tarball" ]; then
        require debootstrap "apt-get install -y debootstrap"
        local rootfs="$CACHE_DIR/rootfs" mirror
        mirror=$(debian_mirror)
        log "debootstrap bookworm from $mirror (about 2 minutes, cached in $tarball)"
        rm -rf "$rootfs"
        debootstrap --variant=minbase --include="$BASE_PACKAGES" bookworm "$rootfs" \
            "$mirror" > "$CACHE_DIR/debootstrap.log" 2>&1 \
            || die "debootstrap failed: see $CACHE_DIR/debootstrap.log"
        # What a server image never reads: package caches, documentation, translations.
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
               "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
               "$rootfs"/usr/share/locale/*
        tar -C "$rootfs" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
        rm -rf "$rootfs"
    fi
    log "importing $tarball as $BASE_IMAGE"
    podman import -q --change 'CMD ["/bin/bash"]' "$tarball" "$BASE_IMAGE" >/dev/null
}

# pip settings the build needs from this host: an index other than PyPI (file:// ones
# are host paths and cannot be reached from the build) and the CA bundle for a
# TLS-intercepting proxy, passed as a secret so it never lands in a layer.
pip_build_args() {
    local key value
    for key in index-url extra-index-url trusted-host; do
        value=$("$PYTHON" -m pip config get "global.$key" 2>/dev/null || true)
        value="${value:-$(printenv "PIP_$(echo "$key" | tr 'a-z-' 'A-Z_')" || true)}"
        value=$(tr ' ' '\n' <<<"$value" | grep -v '^file:' | grep -v '^$' | paste -sd ' ' || true)
        [ -n "$value" ] && printf -- '--build-arg\nPIP_%s=%s\n' \
            "$(echo "$key" | tr 'a-z-' 'A-Z_')" "$value"
    done
    return 0
}

ca_bundle() {
    local candidate
    for candidate in "${PIP_CERT:-}" "$("$PYTHON" -m pip config get global.cert 2>/dev/null || true)" \
                     "${SSL_CERT_FILE:-}" /etc/ssl/certs/ca-certificates.crt; do
        [ -n "$candidate" ] && [ -s "$candidate" ] && { echo "$candidate"; return; }
    done
}

build_image() {
    local args=() ca
    mapfile -t args < <(pip_build_args)
    ca=$(ca_bundle)
    [ -n "$ca" ] && args+=(--secret "id=pipca,src=$ca")
    log "podman build $IMAGE (base $BASE_IMAGE)"
    local t0=$(date +%s)
    # --format docker keeps HEALTHCHECK (the OCI format has no such field).
    podman build --isolation chroot --format docker --pull=never \
        --build-arg "BASE_IMAGE=$BASE_IMAGE" "${args[@]}" -t "$IMAGE" . \
        > "$CACHE_DIR/build.log" 2>&1 \
        || { tail -n 30 "$CACHE_DIR/build.log"; die "podman build failed: see $CACHE_DIR/build.log"; }
    BUILD_S=$(( $(date +%s) - t0 ))
    SIZE_MB=$(( $(podman image inspect --format '{{.Size}}' "$IMAGE") / 1000000 ))
    log "built in ${BUILD_S}s, image size ${SIZE_MB} MB"
}

check_image() {
    if "${PODMAN[@]}" run --rm "${RUN_LIMITS[@]}" "$IMAGE" python -c "import tensorflow" \
            >/dev/null 2>&1; then
        die "tensorflow is importable in the image"
    fi
    log "ok   no tensorflow in the image"
    local uid user
    user=$(podman image inspect --format '{{.Config.User}}' "$IMAGE")
    uid=$("${PODMAN[@]}" run --rm "${RUN_LIMITS[@]}" "$IMAGE" id -u)
    [ -n "$user" ] && [ "$uid" != 0 ] || die "image runs as root (User='$user', uid=$uid)"
    log "ok   runs as uid $uid (User $user)"
    podman image inspect --format '{{json .Config.Healthcheck}}' "$IMAGE" | grep -q healthcheck \
        || die "image has no HEALTHCHECK (built without --format docker?)"
}

free_port() {
    "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start_container() {
    GRPC_PORT=$(free_port)
    METRICS_PORT=$(free_port)
    local mount=()
    if [ -n "${MODEL_REPOSITORY:-}" ]; then
        mount=(-v "$(cd "$MODEL_REPOSITORY" && pwd):/models:ro")
        log "mounting $MODEL_REPOSITORY at /models"
    elif [ ! -f models/mnist/config.pbtxt ] || [ ! -f models/sentiment/config.pbtxt ]; then
        die "models/ lacks mnist or sentiment: run make train-export, or set MODEL_REPOSITORY"
    fi
    # Hardened like deploy/k8s/deployment.yaml: read-only root (a tmpfs /tmp), no
    # capabilities, no privilege escalation.
    "${PODMAN[@]}" run -d --name "$NAME" "${RUN_LIMITS[@]}" "${mount[@]}" \
        --read-only --cap-drop ALL --security-opt no-new-privileges \
        -p "127.0.0.1:$GRPC_PORT:8001" -p "127.0.0.1:$METRICS_PORT:8002" \
        -e SERVE_INTRA_OP_THREADS=1 "$IMAGE" >/dev/null
    log "started $NAME: gRPC 127.0.0.1:$GRPC_PORT, metrics 127.0.0.1:$METRICS_PORT"
}

wait_healthy() {
    local t0=$(date +%s) line=""
    while (( $(date +%s) - t0 < HEALTH_TIMEOUT_S )); do
        [ "$(podman inspect --format '{{.State.Running}}' "$NAME")" = true ] \
            || die "container exited during start-up"
        if line=$("$PYTHON" -m server.healthcheck --address "127.0.0.1:$GRPC_PORT" \
                  --timeout-s 2 2>&1); then
            READY_S=$(( $(date +%s) - t0 ))
            log "ok   health from the host: $line (after ${READY_S}s)"
            return
        fi
        sleep 1
    done
    die "not SERVING after ${HEALTH_TIMEOUT_S}s: $line"
}

check_container_healthcheck() {
    # The image's own HEALTHCHECK command, run inside the container.
    "${PODMAN[@]}" healthcheck run "$NAME" >/dev/null || die "the image HEALTHCHECK failed"
    log "ok   image HEALTHCHECK passes inside the container"
}

check_inference() {
    "$PYTHON" tools/container/smoke_client.py "127.0.0.1:$GRPC_PORT" | sed 's/^/     /'
    [ "${PIPESTATUS[0]}" -eq 0 ] || die "inference failed"
    log "ok   MNIST and sentiment inference through tritonclient"
}

check_metrics() {
    local body
    body=$("$PYTHON" - "$METRICS_PORT" <<'EOF'
import sys, urllib.request
with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5) as reply:
    assert reply.status == 200, reply.status
    sys.stdout.write(reply.read().decode())
EOF
    ) || die "GET /metrics on port 8002 failed"
    if grep -q '^onnxserve_' <<<"$body"; then
        log "ok   /metrics: $(grep -c '^# TYPE onnxserve_' <<<"$body") onnxserve_ metric families"
    elif [ -f server/metrics.py ]; then
        die "/metrics answered but has no onnxserve_ metrics"
    else
        grep -q '^process_\|^python_' <<<"$body" || die "/metrics has no known metrics"
        log "ok   /metrics answers (no server/metrics.py yet, so no onnxserve_ names)"
    fi
}

check_graceful_stop() {
    local t0 code load_pid
    # Clients keep sending while SIGTERM arrives: every request must succeed or be
    # refused (draining, then no server), never be cut off half way.
    "$PYTHON" tools/container/smoke_client.py --until-stopped "127.0.0.1:$GRPC_PORT" \
        > "$CACHE_DIR/load.log" 2>&1 &
    load_pid=$!
    sleep 2
    t0=$(date +%s)
    "${PODMAN[@]}" stop -t "$STOP_GRACE_S" "$NAME" >/dev/null
    STOP_S=$(( $(date +%s) - t0 ))
    code=$(podman inspect --format '{{.State.ExitCode}}' "$NAME")
    [ "$code" = 0 ] || die "exit code $code after SIGTERM (expected 0)"
    (( STOP_S < STOP_GRACE_S )) || die "took ${STOP_S}s to stop: killed at the grace period?"
    "${PODMAN[@]}" logs "$NAME" 2>&1 | grep -q "stopped" \
        || die "no 'stopped' line in the log: the server did not drain"
    wait "$load_pid" || { sed 's/^/    /' "$CACHE_DIR/load.log"; die "requests failed during the drain"; }
    log "$(tail -n1 "$CACHE_DIR/load.log")"
    log "ok   SIGTERM: drained and exited 0 in ${STOP_S}s"
}

check_prerequisites
mkdir -p "$CACHE_DIR" && printf '*\n' > .cache/.gitignore  # the cache stays out of git
build_base_image
build_image
check_image
start_container
wait_healthy
check_container_healthcheck
check_inference
check_metrics
check_graceful_stop
log "PASS (build ${BUILD_S}s, ready ${READY_S}s, stop ${STOP_S}s, image ${SIZE_MB} MB, total $(( $(date +%s) - t_start ))s)"
