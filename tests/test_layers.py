"""The floor plan holds: `lint-imports` checks the contracts in pyproject.toml against the code of this checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_no_import_runs_back_up_a_layer() -> None:
    # the checkout first on the path, so the contracts judge this code and not whatever the venv has installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    exe = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(exe), "--no-cache"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "Contracts: 4 kept, 0 broken." in done.stdout


def test_a_deliberate_back_import_breaks_the_contract(tmp_path: Path) -> None:
    # a copy of the packages and contracts where the contract (schemas) imports the CLI: lint-imports must refuse it
    # copytree follows the package's links (evostream/schemas -> ../schemas, ...): the copy is one plain package
    skip = shutil.ignore_patterns("__pycache__", "*.pt", "*.safetensors", "node_modules")
    shutil.copytree(ROOT / "evostream", tmp_path / "evostream", ignore=skip)
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    codec = tmp_path / "evostream" / "schemas" / "codec.py"
    codec.write_text(codec.read_text() + "\nimport evostream.cli.readers  # noqa: E402,F401  a back-import\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    exe = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(exe), "--no-cache"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0, done.stdout[-4000:]
    assert "evostream.schemas.codec -> evostream.cli.readers" in done.stdout, done.stdout[-4000:]
    assert "BROKEN" in done.stdout
