"""POST /infer names a governed prompt template: the service renders the prompt into it and the answer says which
version; an unknown template is the request's error, a malformed name a 422 before anything is sent."""

from __future__ import annotations

import time
from typing import Any

import httpx

from evostream.core.artifacts import ArtifactStore
from evostream.prompts.template import Template
from evostream.views.governance import GovernanceView
from evostream.wiring.templates import create
from tests.api.conftest import Deployment


def _infer(d: Deployment, **body: Any) -> httpx.Response:
    return httpx.post(d.url + "/infer", json={"max_new_tokens": 16, "risk_wait_s": 0, **body}, timeout=60)


def test_infer_renders_the_prompt_into_the_named_template(deployment: Deployment) -> None:
    d = deployment
    view = GovernanceView(d.settings.bootstrap_servers, d.settings)
    admin, alice = view.actor("admin"), view.actor("alice")
    made = create(admin, ArtifactStore(d.settings.artifacts_dir), Template("api-rev", "reverse: {input}", ("reverse",)))
    assert (made.version, made.stage) == ("api-rev@1", "staging")  # four eyes: an approver's turn
    alice.approve("template/api-rev", made.version, reason="fine")
    admin.promote("template/api-rev", made.version, stage="production", reason="approved")

    deadline = time.monotonic() + 30
    while (out := _infer(d, prompt="hello", template="api-rev").json())["template_version"] != "api-rev@1":
        assert time.monotonic() < deadline, f"the service did not follow the log: {out}"
        time.sleep(0.2)
    assert out["error"] is None and out["model_version"] == d.v2
    assert _infer(d, prompt="reverse: hello").json()["template_version"] is None
    unknown = _infer(d, prompt="hello", template="api-nope")
    assert unknown.status_code == 200
    assert unknown.json()["finish_reason"] == "ERROR"
    assert "unknown template 'api-nope'" in unknown.json()["error"]
    bad = _infer(d, prompt="hello", template="Not A Name")
    assert bad.status_code == 422 and "template" in bad.text
