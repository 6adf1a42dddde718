"""Which services the dashboard depends on are running, told by their consumer groups: a group with no member has
no process behind it. ``/health`` reports each, and a sentence for each needed one that is missing, so the page can
say why its panels stay empty (a trace's risk that never comes) instead of waiting.

Members, not lag, decide: a group's lag also stands still when no traffic comes, and a group that never committed has
no lag at all, while a running service is a member from its start. The group names are the services' own (the
catalog's ``INFERENCE_GROUP`` and ``EVOLUTION_GROUP``, ``Settings.processors_app_id``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from evostream.api.answers import Component
from evostream.core.settings import Settings
from evostream.schemas.catalog import EVOLUTION_GROUP, INFERENCE_GROUP


@dataclass(frozen=True)
class Needed:
    """A service as ``/health`` names it, and the consumer group its processes join."""

    name: str
    group: str
    notice: str | None
    """What the page says while no member is in the group; None for a service whose absence is no problem."""


def needed(settings: Settings) -> tuple[Needed, ...]:
    """The services ``/health`` reports on, the processors' group as ``settings`` names it."""
    return (
        Needed(
            "inference",
            INFERENCE_GROUP,
            "no answers to prompts: the inference service is not running (evostream serve)",
        ),
        Needed(
            "processors",
            settings.processors_app_id,
            "no risk reports, drift windows or profiles: the stream processors are not running (evostream process)",
        ),
        # cycles also run on demand (POST /evolve): the automatic service's absence is reported, not warned of
        Needed("evolution", EVOLUTION_GROUP, None),
    )


def judge(services: Iterable[Needed], members: Mapping[str, int] | None) -> dict[str, Component]:
    """Each service as ``/health`` shows it; ``members`` None when the broker could not say (then nothing is
    claimed missing)."""
    out = {}
    for s in services:
        n = None if members is None else members.get(s.group, 0)
        running = None if n is None else n > 0
        out[s.name] = Component(
            group=s.group, members=n, running=running, notice=s.notice if running is False else None
        )
    return out
