"""``evostream status``: each component's health, restarts, uptime, lag and the versions served; ``--check`` is the
health check of docker-compose.yml and the Docker image."""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING, Annotated

import typer

from evostream.cli.common import Bootstrap, friendly, say
from evostream.cli.components import API_PORT, components
from evostream.cli.up import Model, RunDir, model_name
from evostream.core.settings import load_settings

if TYPE_CHECKING:
    from evostream.wiring.status import StatusReport

AUTO = "auto"


@friendly
def status(
    component: Annotated[
        list[str] | None,
        typer.Option(
            help="Only this component (repeat); 'auto': the one this container's PID 1 runs (all of `evostream "
            "up`'s when it runs `up`)."
        ),
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Exit 1 when a component shown is not healthy (a health check).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
    model: Model = None,
    api_port: Annotated[int, typer.Option(help="The API's port, where no `evostream up` says it.")] = API_PORT,
    run_dir: RunDir = None,
    bootstrap: Bootstrap = None,
) -> None:
    """Each component: up / down / restarting, pid, restarts, uptime, consumer-group lag, and why it is unhealthy;
    whether the broker answers; the version each model serves (production, and a running rollout's candidate and
    weight). From the state files of the `evostream up` running from the run folder, else from this machine's
    processes (systemd, a container)."""
    from evostream.wiring.status import gather, pid1_component

    settings = load_settings(bootstrap_servers=bootstrap, run_dir=run_dir)
    table = components(settings, model_name(model), api_port=api_port)
    wanted = list(component or [])
    chosen = table
    if wanted == [AUTO]:
        from evostream.wiring.supervisor import cmdline, running_supervisor

        run = running_supervisor(settings.run_dir)
        found = pid1_component(run.components if run is not None else table, cmdline(1))
        if found is None:
            say("PID 1 runs no evostream component: nothing to check")
            return
        chosen = found
    elif wanted:
        names = {c.name for c in table}
        unknown = [w for w in wanted if w not in names]
        if unknown:
            raise typer.BadParameter(f"no component {unknown[0]!r}; the components: {', '.join(sorted(names))}")
        chosen = [c for c in table if c.name in wanted]
    report = gather(settings, tuple(chosen), settings.run_dir, versions=not check)
    unhealthy = [c for c in report.components if not c.healthy]
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=1))
    elif check:
        for c in report.components:
            typer.echo(f"{c.name}: {c.state} ({c.reason})")
    else:
        _print(report)
    if check and unhealthy:
        raise typer.Exit(1)


def _when(t: float) -> str:
    return dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def _duration(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(s)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _print(report: StatusReport) -> None:
    reach = "reachable" if report.broker_reachable else f"NOT reachable: {report.broker_error}"
    typer.echo(f"broker {report.bootstrap}: {reach}")
    sup = report.supervisor
    if sup is not None and sup["running"]:
        typer.echo(f"evostream up: pid {sup['pid']}, since {_when(sup['started_at'])} (logs in {sup['run_dir']})")
    else:
        ended = ""
        if sup is not None:
            ended = (
                f"; the last one stopped at {_when(sup['stopped_at'])}" if sup["stopped_at"] else "; the last one died"
            )
        typer.echo(f"evostream up: not running from {report.run_dir}{ended} (components found by their processes)")
    typer.echo(f"{'component':16} {'state':11} {'pid':>8} {'restarts':>8} {'uptime':>8} {'lag':>6}  note")
    for c in report.components:
        pid = "-" if c.pid is None else str(c.pid)
        restarts = "-" if c.restarts is None else str(c.restarts)
        lag = "-" if c.lag is None else str(c.lag)
        note = c.reason if c.healthy is False or c.state != "up" else ("ok" if c.reason == "running" else c.reason)
        line = f"{c.name:16} {c.state:11} {pid:>8} {restarts:>8} {_duration(c.uptime_s):>8} {lag:>6}  {note}"
        typer.secho(line, fg=None if c.healthy else typer.colors.RED)
    if report.governance_error:
        typer.echo(f"versions: {report.governance_error}")
    for name, m in (report.models or {}).items():
        r = m.get("rollout")
        rollout = (
            f"; rollout {r['rollout_id']}: candidate {r['candidate']} at {r['weight']}% (step {r['step']})"
            if r
            else "; no rollout running"
        )
        typer.echo(f"model {name}: production {m['production'] or '-'}{rollout}")
