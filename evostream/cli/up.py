"""``evostream up``: the whole system on one machine, supervised; and ``evostream genesis``, its first step.

``up`` starts the local broker (unless ``--bootstrap`` names one), makes sure the governance log has a production
version to serve (the genesis, in a child process: the supervisor never loads torch), then runs every component as
a child process (``wiring.supervisor``): restarted with back-off when it exits, stopped in reverse order on SIGTERM
or Ctrl-C. ``evostream status`` reads what it writes."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Annotated

import typer

from evostream.cli.common import Bootstrap, CtlPort, Port, broker, friendly, say
from evostream.cli.components import API_PORT, BROKER, components, pick
from evostream.core.errors import GovernanceError
from evostream.core.settings import Settings, load_settings

Model = Annotated[
    str | None,
    typer.Option(help="The registry model served, governed (default: the embedded model, evostream/t5-tiny-suite)."),
]
RunDir = Annotated[
    Path | None,
    typer.Option(help="Where each component's log and state file go. Env: EVOSTREAM_RUN_DIR."),
]
Names = Annotated[list[str] | None, typer.Option(help="A component's name (repeat).")]


def model_name(model: str | None) -> str:
    if model:
        return model
    from evostream.models.default_model import MODEL_ID

    return MODEL_ID


@friendly
def genesis(model: Model = None, bootstrap: Bootstrap = None) -> None:
    """Make sure the governance log has a production version to serve and print it: on an empty log the embedded
    model is stored, registered, validated, approved and promoted (what `serve --governed` needs first)."""
    from evostream.models.default_model import MODEL_ID

    settings = load_settings(bootstrap_servers=bootstrap)
    server = broker(settings)
    name = model_name(model)
    if name == MODEL_ID:
        from evostream.wiring.governed import ensure_genesis

        typer.echo(ensure_genesis(settings, server, say))
        return
    from evostream.views.governance import GovernanceView

    version = GovernanceView(server, settings).replayed().registry.production(name)
    if version is None:
        raise GovernanceError(
            f"no production version of {name} in the governance log, and the genesis only knows the embedded model "
            f"{MODEL_ID}: register, approve and promote one first"
        )
    typer.echo(version)


@friendly
def up(
    model: Model = None,
    sinks: Annotated[
        str | None, typer.Option(help="The sinks `sinks run` feeds (comma-separated). Env: EVOSTREAM_SINKS.")
    ] = None,
    no_api: Annotated[bool, typer.Option("--no-api", help="Run no HTTP API.")] = False,
    api_port: Annotated[int, typer.Option(help="The API's port on 127.0.0.1.")] = API_PORT,
    trust_loopback: Annotated[
        bool, typer.Option("--trust-loopback", help="The API lets this machine's clients in without a key.")
    ] = False,
    only: Names = None,
    without: Names = None,
    stop_timeout: Annotated[
        float, typer.Option(min=0.0, help="Seconds each component has to stop after SIGTERM before SIGKILL.")
    ] = 30.0,
    run_dir: RunDir = None,
    port: Port = None,
    controller_port: CtlPort = None,
    bootstrap: Bootstrap = None,
) -> None:
    """Start and supervise everything on this machine: the local broker (unless --bootstrap), serve --governed,
    process, the evolution consumer, the rollout controller, the sinks and the API. A component that exits is
    started again after a back-off (1 s, doubling to 60 s; reset after 60 s up); SIGTERM or Ctrl-C stops them all,
    the last started first. Components: broker, serve, process, evolution, rollout-control, sinks, api."""
    from evostream.wiring.supervise import Backoff
    from evostream.wiring.supervisor import (
        BrokerRunner,
        ChildRunner,
        Supervisor,
        SupervisorError,
        cli_argv,
        log_path,
        running_supervisor,
    )

    settings = load_settings(
        bootstrap_servers=bootstrap, sinks=sinks, run_dir=run_dir, broker_port=port, controller_port=controller_port
    )
    name = model_name(model)
    local = settings.bootstrap_servers is None
    every = components(settings, name, sinks, api_port, trust_loopback, broker=local)
    chosen = pick(every, only or [], [*(without or []), *(["api"] if no_api else [])])
    if not chosen:
        raise typer.BadParameter("no component left to run")
    folder = settings.run_dir
    folder.mkdir(parents=True, exist_ok=True)
    running = running_supervisor(folder)
    if running is not None:
        raise SupervisorError(
            f"evostream up already runs from {folder} (pid {running.pid}); `evostream status` shows it, or give "
            "another --run-dir"
        )
    stop = threading.Event()
    hurry = threading.Event()

    def on_signal(*_: object) -> None:
        if stop.is_set():
            hurry.set()  # a second Ctrl-C: what is left is killed now
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)

    runner = None
    pid = None
    if chosen[0].name == BROKER:
        runner = BrokerRunner(settings, say)
        pid = runner.start(log_path(folder, BROKER))
        server = runner.bootstrap
        credentials: Path | None = runner.stack.credentials_file
    else:
        server = broker(settings)
        credentials = _credentials(settings)
    supervisor = Supervisor(folder, server, Backoff(), stop_timeout, say, credentials)
    supervisor.hurry = hurry
    env = _child_env(server, credentials)
    if runner is not None:
        supervisor.add(chosen[0], runner, pid)
    try:
        if any(c.name == "serve" for c in chosen) and not stop.is_set():
            version = _genesis(name, env)
            say(f"serving {name}: production is {version}")
    except BaseException:
        supervisor.stop_all()
        raise
    for c in chosen:
        if c.name != BROKER:
            supervisor.add(c, ChildRunner(cli_argv(c.command), env))
    say(
        f"evostream up: {', '.join(c.name for c in chosen)} on {server}; logs and state in {folder}; "
        "`evostream status` shows them; Ctrl-C stops them"
    )
    supervisor.run(stop)
    say("evostream up: every component stopped")


def _credentials(settings: Settings) -> Path | None:
    """The credentials file the components log in with: the setting's, else the running local stack's."""
    if settings.kafka_credentials is not None:
        return settings.kafka_credentials
    from evostream.core.stack import LocalStack

    stack = LocalStack(settings)
    return stack.credentials_file if stack.read_state() is not None else None


def _child_env(server: str, credentials: Path | None) -> dict[str, str]:
    env = {**os.environ, "EVOSTREAM_BOOTSTRAP_SERVERS": server, "PYTHONUNBUFFERED": "1"}
    if credentials is not None:
        env["EVOSTREAM_KAFKA_CREDENTIALS"] = str(credentials)
    return env


def _genesis(model: str, env: dict[str, str]) -> str:
    """``evostream genesis`` in a child process (its progress on this stderr); the production version."""
    from evostream.wiring.supervisor import cli_argv

    done = subprocess.run(
        cli_argv(("genesis", "--model", model)),
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise GovernanceError(f"the genesis failed (exit code {done.returncode}): nothing to serve; see above")
    return done.stdout.strip()
