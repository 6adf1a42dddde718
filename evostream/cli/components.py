"""The components of a deployment on one machine: which ``evostream`` command each runs, and the consumer groups (or
the URL) that show it at work. ``evostream up`` starts them in this order; ``evostream status`` reports on them;
``deploy/systemd`` and ``docker-compose.yml`` run the same commands."""

from __future__ import annotations

from collections.abc import Sequence

from evostream.cli.sinks import GROUP_PREFIX
from evostream.core.settings import Settings
from evostream.schemas.catalog import EVOLUTION_GROUP, INFERENCE_GROUP
from evostream.wiring.supervise import Component

BROKER = "broker"
ORDER = (BROKER, "serve", "process", "evolution", "rollout-control", "sinks", "api")
"""Every component's name, in start order (stopped in the reverse order)."""
API_PORT = 8000


def rollout_control_exists() -> bool:
    """Whether this evostream has the rollout controller's command (``evostream rollout control``)."""
    import typer.main

    from evostream.cli import app

    rollout = typer.main.get_group(app).commands.get("rollout")
    return rollout is not None and "control" in getattr(rollout, "commands", {})


def components(
    settings: Settings,
    model: str,
    sinks: str | None = None,
    api_port: int = API_PORT,
    trust_loopback: bool = False,
    broker: bool = True,
) -> list[Component]:
    """Every component, in start order: the broker (when ``broker``, i.e. the local one), the governed service of
    ``model``, the processors, the evolution consumer, the rollout controller (where the command exists), the sinks
    ``sinks`` (default: the setting's) and the API on 127.0.0.1:``api_port``."""
    names = [s.strip() for s in (sinks or settings.sinks).split(",") if s.strip()]
    out = [Component(BROKER)] if broker else []
    out += [
        Component("serve", ("serve", "--governed", model), (INFERENCE_GROUP,)),
        Component("process", ("process",), (settings.processors_app_id,)),
        Component("evolution", ("evolution", "run", "--model", model), (EVOLUTION_GROUP,)),
    ]
    if rollout_control_exists():
        out.append(Component("rollout-control", ("rollout", "control", "--model", model)))
    out.append(
        Component("sinks", ("sinks", "run", "--sinks", ",".join(names)), tuple(f"{GROUP_PREFIX}{n}" for n in names))
    )
    api = ("api", "--port", str(api_port), *(("--trust-loopback",) if trust_loopback else ()))
    out.append(Component("api", api, url=f"http://127.0.0.1:{api_port}/health"))
    return out


def pick(all_: Sequence[Component], only: Sequence[str], without: Sequence[str]) -> list[Component]:
    """The components named by ``only`` (all when empty) less those in ``without``; an unknown name is refused."""
    import typer

    for name in [*only, *without]:
        if name not in ORDER:  # a known one this deployment leaves out (the broker of another machine) is no error
            raise typer.BadParameter(f"no component {name!r}; the components: {', '.join(ORDER)}")
    return [c for c in all_ if (not only or c.name in only) and c.name not in without]
