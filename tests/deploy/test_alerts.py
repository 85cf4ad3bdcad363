"""The alert rules are valid Prometheus rules and fire when they should (promtool).

``promtool check rules`` parses every expression; ``promtool test rules`` replays the
series in deploy/monitoring/alerts_test.yml and checks which alerts fire, with which
labels and summaries. Skipped, saying why, only where promtool is missing (`.ci/run`
installs Debian's prometheus package for it).
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.deploy.manifests import MONITORING


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("no promtool on this machine (apt-get install prometheus); .ci/run installs it")
    return path


@pytest.mark.parametrize("command", [["check", "rules", "alerts.yml"],
                                     ["test", "rules", "alerts_test.yml"]])
def test_promtool_accepts_the_rules(command):
    result = subprocess.run([_promtool(), *command], cwd=MONITORING, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
