"""How a request's template is resolved on the governance log (no broker: a log in memory): 'name' is the
production version, 'name@N' a version that passed its validation; everything else is a clear refusal. And the
gate's min_gain is a policy setting, bounded."""

from __future__ import annotations

from typing import Any

import pytest

from bench.replay import ADMIN, Chain
from evostream.consumers.governance.projection import Registry, replay
from evostream.prompts.template import TemplateError
from evostream.wiring.templates import base_version, min_gain, next_version, resolve, template_names
from tests.consumers.governance.test_projection import refused

MODEL = "template/rev"


def _register(c: Chain, version: str, parent: str | None, sha: str) -> None:
    payload: dict[str, Any] = {
        "version": version,
        "artifact_uri": f"sha256:{sha}",
        "artifact_sha256": sha,
        "parent": parent,
        "operator": "template-create",
        "operator_params": {},
        "metrics": {},
    }
    c.append("ModelRegistered", ADMIN, payload, MODEL)


def _validated(c: Chain, version: str, passed: bool) -> None:
    c.append("ValidationCompleted", ADMIN, {"version": version, "passed": passed, "gates": {}}, MODEL)


def _log(policy: dict[str, Any] | None = None) -> Chain:
    """rev@1 in production, rev@2 validated (not promoted), rev@3 failed its validation."""
    c = Chain(seed=3)
    c.genesis()
    rules = {"production_approvals": 1, "auto_promote_staging": False, "auto_promote_production": True}
    c.append("PolicyChanged", ADMIN, {"policy": rules | (policy or {})})
    _register(c, "rev@1", None, "a1" * 32)
    _validated(c, "rev@1", True)
    c.append("Promoted", ADMIN, {"version": "rev@1", "stage": "production", "alias": None}, MODEL)
    _register(c, "rev@2", "rev@1", "a2" * 32)
    _validated(c, "rev@2", True)
    _register(c, "rev@3", "rev@2", "a3" * 32)
    _validated(c, "rev@3", False)
    return c


def _registry(c: Chain) -> Registry:
    registry, findings = replay(c.log())
    assert findings == []
    return registry


def test_a_name_is_its_production_version_and_a_version_is_itself() -> None:
    reg = _registry(_log())
    assert resolve(reg, "rev") == ("rev@1", "a1" * 32)
    assert resolve(reg, "rev@2") == ("rev@2", "a2" * 32)
    assert resolve(reg, "rev@rev@2") == ("rev@2", "a2" * 32)
    assert template_names(reg) == ["rev"]
    assert next_version(reg, "rev") == "rev@4"
    assert next_version(reg, "new") == "new@1"
    assert base_version(reg, "rev") == "rev@1"
    assert base_version(reg, "new") is None


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("nope", "unknown template 'nope' (templates: rev;"),
        ("rev@9", "template 'rev' has no version rev@9 (versions: rev@1, rev@2, rev@3)"),
        ("rev@3", "template version rev@3 has not passed a validation: it does not serve"),
        ("rev@latest", "a template version is a number"),
        ("Rev", "names no template"),
    ],
)
def test_what_cannot_serve_is_refused_with_what_there_is(ref: str, message: str) -> None:
    with pytest.raises(TemplateError) as e:
        resolve(_registry(_log()), ref)
    assert message in str(e.value)


def test_a_template_without_a_production_version_says_so() -> None:
    c = Chain(seed=4)
    c.genesis()
    _register(c, "rev@1", None, "a1" * 32)
    with pytest.raises(TemplateError, match="has no production version \\(versions: rev@1\\)"):
        resolve(_registry(c), "rev")


def test_the_gates_min_gain_is_the_policys_and_bounded() -> None:
    assert min_gain(_registry(_log())) == 0.05  # never set: the default
    assert min_gain(_registry(_log({"template_min_gain": 0.1}))) == 0.1
    c = _log()
    c.append("PolicyChanged", ADMIN, {"policy": {"template_min_gain": 1.5}}, reason="a typo")
    refused(c, "policy", "template_min_gain must be within [0, 1], got 1.5")
