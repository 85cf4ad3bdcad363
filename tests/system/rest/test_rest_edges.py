"""REST answers a person meets at the edges (issue #19): unknown models are 404 with our
JSON error on every model endpoint, readiness included."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest


def _get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as answer:
        return answer.code, json.loads(answer.read())


@pytest.mark.parametrize("path", ["/v2/models/nope/ready", "/v2/models/nope",
                                  "/v2/models/nope/config", "/v2/models/mnist/versions/9/ready"])
def test_unknown_models_and_versions_are_404_everywhere(server, path):
    status, body = _get(server.http_url + path)
    assert status == 404 and "error" in body, (status, body)


def test_a_ready_model_is_200(server):
    assert _get(server.http_url + "/v2/models/mnist/ready") == (200, {"name": "mnist", "ready": True})
