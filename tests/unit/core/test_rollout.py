"""Rollout settings, the canary's split and the shadow comparison, without a server."""

from __future__ import annotations

import numpy as np
import pytest

from server.core.errors import ModelLoadError
from server.core.rollout import Rollout, RolloutSpec, ShadowRunner, ShadowStats, rollout_spec


@pytest.mark.parametrize("parameters, message", [
    ({"canary_version": "two", "canary_weight": "0.3"}, "canary_version='two'"),
    ({"canary_version": "2", "canary_weight": "1.5"}, "canary_weight='1.5'"),
    ({"canary_version": "2"}, "canary_weight is missing"),
    ({"shadow_version": "2", "shadow_fraction": "most"}, "shadow_fraction='most'"),
])
def test_bad_settings_are_refused_quoting_the_value(parameters, message):
    with pytest.raises(ModelLoadError, match=message):
        rollout_spec(parameters, "model 'm'")


def test_no_settings_no_rollout():
    assert rollout_spec({"text_preprocessor": "tokenizer.json"}, "m") is None


class _Version:
    def __init__(self, number):
        self.version = number
        self.shadow = None


def test_the_canary_gets_its_weight_of_unversioned_requests():
    versions = {1: _Version(1), 2: _Version(2)}
    rollout = Rollout(RolloutSpec(canary_version=2, canary_weight=0.3), versions,
                      ShadowRunner(), "m")
    assert rollout.primary == 1  # the newest version that is not the candidate
    picks = [rollout.pick(versions).version for _ in range(20_000)]
    assert picks.count(2) / len(picks) == pytest.approx(0.3, abs=0.02)
    weightless = Rollout(RolloutSpec(canary_version=2, canary_weight=0.0), versions,
                         ShadowRunner(), "m")
    assert {weightless.pick(versions).version for _ in range(1000)} == {1}


def test_a_rollout_needs_its_versions_loaded():
    with pytest.raises(ModelLoadError, match=r"version 3, which is not loaded \(loaded: \[1, 2\]\)"):
        Rollout(RolloutSpec(canary_version=3, canary_weight=0.5),
                {1: _Version(1), 2: _Version(2)}, ShadowRunner(), "m")
    with pytest.raises(ModelLoadError, match="needs a primary version"):
        Rollout(RolloutSpec(canary_version=2, canary_weight=0.5), {2: _Version(2)},
                ShadowRunner(), "m")


def test_shadow_agreement_for_classes_and_for_one_probability():
    stats = ShadowStats()
    primary = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], np.float32)
    shadow = np.array([[0.8, 0.2], [0.7, 0.3], [0.6, 0.4]], np.float32)
    stats.record(primary, shadow)
    assert (stats.rows, stats.agree) == (3, 2)
    assert stats.delta_sum == pytest.approx(0.1 + 0.5 + 0.0, abs=1e-6)
    scores = ShadowStats()
    scores.record(np.array([[0.7], [0.4]]), np.array([[0.55], [0.6]]))
    assert (scores.rows, scores.agree) == (2, 1)
    assert sum(scores.delta_counts) == 2
