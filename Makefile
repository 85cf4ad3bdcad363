# One virtual environment per checkout; every target installs what it needs first,
# so `make serve` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA_DIR ?= ../shared/data
MODEL_REPOSITORY ?= models
GRPC_PORT ?= 8001
METRICS_PORT ?= 8002
HTTP_PORT ?= 8000
export DATA_DIR

.PHONY: serve test train-export quick-train proto bench pathbench peer-compare soak abuse container-test clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Serving install only: no TensorFlow.
$(VENV)/.serve: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e .
	touch $@

# Everything: serving + training + test tools.
$(VENV)/.dev: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[train,dev]"
	touch $@ $(VENV)/.serve

serve: $(VENV)/.serve
	$(PY) -m server --model-repository $(MODEL_REPOSITORY) --grpc-port $(GRPC_PORT) --metrics-port $(METRICS_PORT) --http-port $(HTTP_PORT)

# The import contracts (pyproject.toml, ARCHITECTURE.md) first: an arrow the wrong way fails.
test: $(VENV)/.dev
	$(VENV)/bin/lint-imports
	$(PY) -m pytest

train-export: $(VENV)/.dev
	$(PY) -m training train-export --data-dir $(DATA_DIR) --repository $(MODEL_REPOSITORY)

# The pipeline end to end on small subsets (< 2 min), into out/ so models/ stays as committed.
quick-train: $(VENV)/.dev
	QUICK=1 $(PY) -m training train-export --data-dir $(DATA_DIR) --repository out/quick-models

proto: $(VENV)/.dev
	PYTHON=$(PY) tools/gen_proto.sh

# Worker counts to sweep (server --workers): 1 = one process, 2 = supervisor + 2 workers.
BENCH_WORKERS ?= 1,2
bench: $(VENV)/.dev
	$(PY) -m tools.bench --model-repository $(MODEL_REPOSITORY) --workers $(BENCH_WORKERS)

# The cost of each stage of one request, in-process (no network): where the CPU goes.
pathbench: $(VENV)/.serve
	$(PY) -m tools.pathbench --model-repository $(MODEL_REPOSITORY)

# Interleaved rounds against Triton and the do-nothing server of ../shared/peers
# (start Triton first: ../shared/peers/triton_pybackend.sh models/mnist/1/model.onnx 18001).
# PERF_ANALYZER=path/to/perf_analyzer: that C++ client instead of the Python one (the
# headline against Triton); TRITON=host:port TRITON_PID=pid TRITON_HTTP=host:port add Triton.
peer-compare: $(VENV)/.dev
	$(PY) -m tools.peer_compare --sentiment \
	  $(if $(PERF_ANALYZER),--perf-analyzer $(PERF_ANALYZER),--null-server ../shared/peers/null_server.py) \
	  $(if $(TRITON),--triton $(TRITON) --triton-pid $(TRITON_PID) $(if $(TRITON_HTTP),--triton-http $(TRITON_HTTP)))

# Triton's response cache: all-miss vs a 90 %-hit mix at concurrency 32, a hit at c=1.
.PHONY: bench-cache
bench-cache: $(VENV)/.dev
	$(PY) -m tools.cache_bench --model-repository $(MODEL_REPOSITORY) --rounds 3

# REST (binary and JSON tensors) beside gRPC: 1-image MNIST at concurrency 32.
.PHONY: bench-rest
bench-rest: $(VENV)/.dev
	$(PY) -m tools.rest_bench --model-repository $(MODEL_REPOSITORY) --rounds 3

SOAK_DURATION_S ?= 600
soak: $(VENV)/.serve
	$(PY) -m tools.soak --model-repository $(MODEL_REPOSITORY) --duration-s $(SOAK_DURATION_S)

# Attacks a fresh server (huge, lying and heavy requests, scrapes, HTTP/2 floods, idle
# connections) and prints the harm to bystander clients; exit 1 when a goal is missed.
abuse: $(VENV)/.dev
	$(PY) -m tools.abuse --model-repository $(MODEL_REPOSITORY)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache

# Build the image with podman and test it end to end (needs root and podman; README.md, Deploy).
container-test: $(VENV)/.dev
	PYTHON=$(PY) tools/container_test.sh

.PHONY: lint-deploy
lint-deploy: $(VENV)/.dev
	$(PY) -m yamllint -c deploy/.yamllint.yaml deploy
