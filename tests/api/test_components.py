"""Which services ``/health`` says are missing, from their consumer groups' members (no broker: the judgement is
plain)."""

from __future__ import annotations

from evostream.api.components import judge, needed
from evostream.core.settings import load_settings
from evostream.schemas.catalog import EVOLUTION_GROUP, INFERENCE_GROUP


def test_an_empty_inference_group_is_named_with_the_command_that_starts_the_service() -> None:
    settings = load_settings(processors_app_id="procs")
    shown = judge(needed(settings), {"procs": 2, INFERENCE_GROUP: 0})
    assert (shown["processors"].members, shown["processors"].running, shown["processors"].notice) == (2, True, None)
    assert shown["inference"].running is False
    assert shown["inference"].notice == "no answers to prompts: the inference service is not running (evostream serve)"


def test_a_group_the_broker_does_not_list_has_no_members() -> None:
    shown = judge(needed(load_settings(processors_app_id="procs")), {})
    assert [shown[name].members for name in ("inference", "processors", "evolution")] == [0, 0, 0]
    assert shown["processors"].notice is not None and "(evostream process)" in shown["processors"].notice
    assert shown["evolution"].group == EVOLUTION_GROUP and shown["evolution"].notice is None  # optional


def test_nothing_is_claimed_missing_when_the_broker_could_not_say() -> None:
    shown = judge(needed(load_settings()), None)
    assert all(c.members is None and c.running is None and c.notice is None for c in shown.values())
