"""deploy/systemd holds a unit per component and evostream.target, valid for systemd (``systemd-analyze verify``), and
running the same commands as ``evostream up``."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

from evostream.cli.components import ORDER, components
from evostream.core.settings import load_settings
from evostream.models.default_model import MODEL_ID
from evostream.wiring.status import command_words, evostream_args

ROOT = Path(__file__).resolve().parents[1]
UNITS = ROOT / "deploy" / "systemd"
INSTALLED = "/opt/evostream/bin/evostream"
"""Where the units expect the console script (a virtualenv at /opt/evostream: docs/operations.md)."""


def unit(name: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd's keys are case-sensitive
    parser.read(UNITS / name)
    return parser


def verify(units: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify`` on copies of ``units``'s files whose console script is a stub that exists here (the
    command checks that every ExecStart= program is there): the only change made to them."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip(
            "systemd-analyze is not installed (Debian package systemd; .ci/run installs it): units not verified"
        )
    stub = tmp_path / "bin" / "evostream"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    copies = tmp_path / "units"
    copies.mkdir()
    for f in sorted(units.iterdir()):
        (copies / f.name).write_text(f.read_text().replace(INSTALLED, str(stub)))
    return subprocess.run(
        [analyze, "verify", *sorted(str(p) for p in copies.iterdir())],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=copies,
    )


def test_systemd_analyze_verify_accepts_every_unit(tmp_path: Path) -> None:
    done = verify(UNITS, tmp_path)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_systemd_analyze_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(UNITS, broken)
    serve = broken / "evostream-serve.service"
    serve.write_text(serve.read_text().replace("Restart=on-failure", "Restart=sometimes"))
    done = verify(broken, tmp_path)
    assert "evostream-serve.service:" in done.stderr and "restart specifier" in done.stderr, done.stderr


def test_a_unit_per_component_under_the_target() -> None:
    names = {f"evostream-{n}.service" for n in ORDER} | {"evostream-genesis.service"}
    assert {p.name for p in UNITS.iterdir()} == names | {"evostream.target"}
    target = (UNITS / "evostream.target").read_text()
    assert {line.split("=", 1)[1] for line in target.splitlines() if line.startswith("Wants=")} == names
    for name in names:
        u = unit(name)
        assert u["Unit"]["PartOf"] == "evostream.target" and u["Install"]["WantedBy"] == "evostream.target", name
        svc = u["Service"]
        assert svc["User"] == "evostream" and svc["EnvironmentFile"] == "-/etc/evostream/env", name
        assert svc["ExecStart"].split()[0] == INSTALLED, name
        if name != "evostream-genesis.service":  # a one-shot: it runs once, before the service
            assert svc["Restart"] == "on-failure" and float(svc["RestartSec"]) > 0, name
            assert svc["Type"] == "simple" and u["Unit"]["StartLimitIntervalSec"] == "0", name
        if name != "evostream-broker.service":
            assert "evostream-broker.service" in u["Unit"]["After"].split(), name


def test_the_units_run_the_commands_evostream_up_runs() -> None:
    table = {c.name: c for c in components(load_settings(), MODEL_ID)}
    for name in ORDER:
        args = evostream_args(unit(f"evostream-{name}.service")["Service"]["ExecStart"].split())
        assert args is not None, name
        if name == "broker":
            assert args == ["up", "--only", "broker"]  # up keeps the broker running on its ports
        elif name == "rollout-control":
            assert args == ["rollout", "control"]  # the controller's command (up runs it where it exists)
        else:
            assert tuple(args[: len(command_words(table[name]))]) == command_words(table[name]), name
    serve = unit("evostream-serve.service")
    assert serve["Service"]["ExecStart"].endswith(f"serve --governed {MODEL_ID}")
    assert "evostream-genesis.service" in serve["Unit"]["After"].split()
