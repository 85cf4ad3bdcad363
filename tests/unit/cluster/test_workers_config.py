"""``--workers`` / ``SERVE_WORKERS``: parsed, validated, 0 = one per CPU; the hidden
worker flags are the supervisor's only."""

from __future__ import annotations

import os

import pytest

from server.config import effective_workers, load_config
from server.cluster.supervisor import threads_per_worker


def test_workers_default_flag_and_environment(models_dir):
    base = ["--model-repository", str(models_dir)]
    assert load_config(base, environ={}).workers == 1
    assert load_config(base + ["--workers", "3"], environ={}).workers == 3
    assert load_config(base, environ={"SERVE_WORKERS": "2"}).workers == 2
    assert load_config(base + ["--workers", "1"], environ={"SERVE_WORKERS": "4"}).workers == 1


def test_zero_workers_means_one_per_cpu(models_dir):
    config = load_config(["--model-repository", str(models_dir), "--workers", "0"], environ={})
    assert effective_workers(config) == len(os.sched_getaffinity(0))


def test_bad_worker_counts_quote_the_value(models_dir):
    with pytest.raises(ValueError, match="-1"):
        load_config(["--model-repository", str(models_dir), "--workers", "-1"], environ={})
    with pytest.raises(ValueError, match="supervisor"):
        load_config(["--model-repository", str(models_dir), "--worker-index", "0"], environ={})


def test_ort_threads_are_shared_out(models_dir):
    config = load_config(["--model-repository", str(models_dir), "--intra-op-threads", "4"],
                         environ={})
    assert threads_per_worker(config, 2) == 2
    assert threads_per_worker(config, 8) == 1


def test_worker_hang_timeout_flag(models_dir):
    base = ["--model-repository", str(models_dir)]
    assert load_config(base, environ={}).worker_hang_timeout_s == 30.0
    assert load_config(base + ["--worker-hang-timeout-s", "0"],
                       environ={}).worker_hang_timeout_s == 0.0
    assert load_config(base, environ={"SERVE_WORKER_HANG_TIMEOUT_S": "2.5"}
                       ).worker_hang_timeout_s == 2.5
    with pytest.raises(ValueError, match="-1"):
        load_config(base + ["--worker-hang-timeout-s", "-1"], environ={})
