"""Schemathesis against the API's own OpenAPI schema, over real HTTP on the governed deployment: generated requests
(valid and invalid) to every operation must never get a server error. A 504 is the one 5xx allowed: /infer's own
answer when the service does not reply within the generated ``timeout_s`` (a 100 µs timeout is valid input)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.api.conftest import Deployment

pytestmark = pytest.mark.integration


def checker(op: Any, calls: Counter[str]) -> Any:
    """A Hypothesis test of one operation: its generated requests, none answered with a server error."""

    @given(case=op.as_strategy())
    @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case: Any) -> None:
        response = case.call(timeout=120)
        calls[op.label] += 1
        body = response.text
        if response.status_code == 504:
            assert response.json()["error"] == "TimeoutAnswerError", body
            return
        assert response.status_code < 500, f"{op.label} {case.formatted_path}: {response.status_code} {body[:500]}"
        if response.status_code >= 400:  # every refusal says what was wrong, as JSON (OpenAI's shape under /v1/)
            doc = response.json()
            said = doc["error"]["message"] if case.path.startswith("/v1/") else doc.get("detail")
            assert said, body

    return check


def test_no_generated_request_gets_a_server_error(deployment: Deployment) -> None:
    schema = schemathesis.openapi.from_url(deployment.url + "/openapi.json")
    # the event streams never end by design: they are tested by reading them (test_api, test_dashboard)
    schema = schema.exclude(path_regex=r"stream$")
    calls: Counter[str] = Counter()
    for result in schema.get_all_operations():
        checker(result.ok(), calls)()
    # every operation but the two streams was called; those with inputs, with many generated ones
    assert len(calls) == 22 and sum(calls.values()) >= 200, calls
