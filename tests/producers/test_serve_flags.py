"""`evostream serve --route`'s flags are checked before anything loads or connects: a fixed policy's file and level,
and a prompt model that needs the embeddings `--no-embed` turns off. Each case runs the real CLI with no broker and a
model that does not exist, so an error about either would mean the check came too late."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from evostream.routing.policy import LevelGate, RoutePolicy
from tests.producers.routes import digit_prompts

CLI = [sys.executable, "-m", "evostream.cli"]


def serve(flags: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    nowhere = ["--bootstrap", "127.0.0.1:9", "--model", "/nonexistent/model"]
    return subprocess.run([*CLI, "serve", *nowhere, *flags], env=env, capture_output=True, text=True, timeout=120)


def test_a_fixed_policy_and_its_level_are_checked_before_anything_loads(tmp_path: Path) -> None:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "COLUMNS": "400", "EVOSTREAM_ARTIFACTS_DIR": str(tmp_path / "artifacts")}
    plain = tmp_path / "plain.json"
    plain.write_bytes(RoutePolicy("default", None, "", (LevelGate(3, 0.8, 0.5, 1.0),)).to_bytes())
    prompted = tmp_path / "prompted.json"
    prompted.write_bytes(RoutePolicy("default", digit_prompts(384), "", (LevelGate(3, 0.8, 0.5, 1.0),)).to_bytes())
    probed = tmp_path / "probed.json"
    probed.write_bytes(RoutePolicy("default", None, "ab" * 32, (LevelGate(3, 0.8, 0.5, 0.5),)).to_bytes())
    garbage = tmp_path / "garbage.json"
    garbage.write_text('{"format": 1, "route": "default"')
    missing = tmp_path / "missing.json"
    route = ["--route", "default", "--reference", "http://127.0.0.1:9/v1#m"]
    for flags, why in [
        (["--route-policy", str(plain), "--route-level", "9"], "--route-level 9 is not an independence level (0 to 4;"),
        (["--route-policy", str(plain), "--route-level", "-1"], "--route-level -1 is not an independence level"),
        (["--route-policy", str(plain), "--route-level", "2"], f"--route-policy {plain}: "),
        (["--route-policy", str(plain), "--route-level", "2"], "has no gate for level 2 (it has 3)"),
        (["--route-policy", str(missing), "--route-level", "3"], f"--route-policy {missing}: No such file"),
        (["--route-policy", str(garbage), "--route-level", "3"], f"--route-policy {garbage}: not a readable routing"),
        (["--route-policy", str(probed), "--route-level", "3"], f"--route-policy {probed}: its risk probe abababab"),
        (["--route-policy", str(prompted), "--route-level", "3", "--no-embed"], "scores prompts on their embedding"),
        (["--no-embed"], "--no-embed"),
    ]:
        done = serve([*route, *flags], env)
        said = " ".join(done.stderr.replace("│", " ").split())
        assert done.returncode != 0 and why in said, (flags, done.stderr)
        assert "Traceback" not in done.stderr and "127.0.0.1:9" not in said.replace("127.0.0.1:9/v1", ""), said


@pytest.mark.parametrize("level", ["0", "3"])
def test_a_good_fixed_policy_passes_the_checks(tmp_path: Path, level: str) -> None:
    """The same flags with a good policy and level get as far as the broker (not there: the error is about it)."""
    env = os.environ | {"HF_HUB_OFFLINE": "1", "EVOSTREAM_CONNECT_TIMEOUT_S": "1"}
    plain = tmp_path / "plain.json"
    plain.write_bytes(RoutePolicy("default", None, "", (LevelGate(3, 0.8, 0.5, 1.0),)).to_bytes())
    flags = ["--route", "default", "--reference", "http://127.0.0.1:9/v1#m", "--route-policy", str(plain)]
    done = serve([*flags, "--route-level", level, "--no-embed"], env)
    assert done.returncode != 0 and "127.0.0.1:9" in done.stderr, done.stderr


def test_a_routed_governed_serve_must_opt_out_of_rollouts_before_anything_loads(tmp_path: Path) -> None:
    """A routed service takes no part in rollouts: `serve --governed M --route R` is refused with the way out
    (--no-rollouts), which then gets as far as the broker (not there: the error is about it)."""
    env = os.environ | {"HF_HUB_OFFLINE": "1", "COLUMNS": "400", "EVOSTREAM_CONNECT_TIMEOUT_S": "1"}
    flags = ["--governed", "m", "--route", "default", "--reference", "http://127.0.0.1:9/v1#m"]
    done = serve(flags, env)
    said = " ".join(done.stderr.replace("│", " ").split())
    assert done.returncode != 0 and "a routed service takes no part in rollouts" in said, done.stderr
    assert "--no-rollouts" in said and "Traceback" not in done.stderr
    opted_out = serve([*flags, "--no-rollouts"], env)
    said = " ".join(opted_out.stderr.replace("│", " ").split())
    assert opted_out.returncode != 0 and "takes no part in rollouts" not in said and "127.0.0.1:9" in said, said
