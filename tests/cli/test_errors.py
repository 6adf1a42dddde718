"""Every command reports evostream's own errors as one `error:` line and exit code 1, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import typer.main

from evostream.cli import app
from evostream.cli.common import friendly
from evostream.core.stack.ports import free_port

WRAPPED = friendly(lambda: None).__code__  # every function friendly wraps runs this code object


def commands(group: Any, prefix: str = "") -> dict[str, Any]:
    """Every leaf command of a (Typer-built) click group, by its full name."""
    out: dict[str, Any] = {}
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):  # a sub-group: stack, schemas
            out.update(commands(cmd, f"{prefix}{name} "))
        else:
            out[f"{prefix}{name}"] = cmd
    return out


def reports_errors(fn: Any) -> bool:
    """Whether ``friendly`` is among the wrappers of ``fn`` (Typer wraps each callback once more, keeping
    ``__wrapped__``)."""
    while fn is not None:
        if getattr(fn, "__code__", None) is WRAPPED:
            return True
        fn = getattr(fn, "__wrapped__", None)
    return False


def test_every_command_reports_errors_through_friendly() -> None:
    found = commands(typer.main.get_group(app))
    assert set(found) == {
        "demo",
        "serve",
        "publish",
        "process",
        "calibrate",
        "alerts",
        "drift",
        "profile",
        "topics",
        "selfcheck",
        "stack up",
        "stack status",
        "stack down",
        "stack logs",
        "stack credentials",
        "stack kill-node",
        "stack start-node",
        "schemas list",
        "schemas check",
        "governance init",
        "governance keygen",
        "governance enroll",
        "governance revoke",
        "governance policy",
        "governance snapshot",
        "governance void",
        "governance anchor",
        "register",
        "validate",
        "request-approval",
        "approve",
        "promote",
        "rollback",
        "audit",
        "provenance",
        "replay",
        "registry show",
        "analyze",
        "evolve",
        "evolution run",
        "sinks list",
        "sinks run",
        "query",
        "api",
        "governance api-token",
        "feedback",
        "risk train",
        "rescore",
        "route register",
        "route level propose",
        "route level approve",
        "route level lower",
        "route show",
        "route train",
        "route eval",
        "savings",
        "reference-labels",
        "rollout start",
        "rollout status",
        "rollout abort",
        "rollout control",
        "compare",
        "up",
        "genesis",
        "status",
        "template create",
        "template list",
        "template show",
        "template evolve",
        "template rollback",
    }
    unwrapped = sorted(name for name, cmd in found.items() if not reports_errors(cmd.callback))
    assert unwrapped == []


def test_a_reader_without_a_broker_says_so_in_one_line() -> None:
    env = {**os.environ, "EVOSTREAM_CONNECT_TIMEOUT_S": "2"}
    done = subprocess.run(
        [sys.executable, "-m", "evostream.cli", "drift", "--bootstrap", f"127.0.0.1:{free_port()}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no Kafka broker answers at"), done.stderr


def test_loading_the_cli_loads_no_model_code() -> None:
    # every command imports the whole CLI: one that needs no model (stack, process, readers) must not pay for torch
    code = "import sys, evostream.cli; print(sorted(m for m in ('torch', 'transformers', 'faust') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"
