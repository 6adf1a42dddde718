"""The components `evostream up` starts: each of them works on the model it was given."""

from __future__ import annotations

from evostream.cli.components import components, rollout_control_exists
from evostream.core.settings import load_settings


def test_every_component_of_a_model_is_told_the_model() -> None:
    """Review finding 2: `up --model X` ran `rollout control` without `--model X`, so the controller followed the
    embedded model's rollouts, not X's."""
    assert rollout_control_exists()
    table = {c.name: c.command for c in components(load_settings(), "acme/other-model")}
    assert table["serve"] == ("serve", "--governed", "acme/other-model")
    assert table["evolution"] == ("evolution", "run", "--model", "acme/other-model")
    assert table["rollout-control"] == ("rollout", "control", "--model", "acme/other-model")
