"""What ships is what was tested: one installed import package, one module object per file, and a wheel that runs
and serves the dashboard from its own files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from evostream.core.stack.ports import free_port
from tests.wheel import ROOT, top_level

FOLDERS = ("producers", "stream_processors", "consumers", "schemas", "plugins", "models")

# Imports every module of the evostream package (the repository's folders through their links), then lists each file
# that more than one module object came from, and each folder that imports under its bare name too.
TWO_NAMES = """
import importlib, json, os, pkgutil, sys
import evostream
skip = ("evostream.cli.__main__", "evostream.api.web")
for m in pkgutil.walk_packages(evostream.__path__, "evostream."):
    if not m.name.startswith(skip):
        importlib.import_module(m.name)
by_file = {}
for name, module in list(sys.modules.items()):
    path = getattr(module, "__file__", None)
    if path and os.path.realpath(path).startswith(sys.argv[1]):
        by_file.setdefault(os.path.realpath(path), []).append(name)
bare = []
for folder in sys.argv[2:]:
    try:
        importlib.import_module(folder)
    except ImportError as e:
        if "import evostream." not in str(e):
            raise
    else:
        bare.append(folder)
print(json.dumps({"modules": len(by_file), "twice": {f: n for f, n in by_file.items() if len(n) > 1}, "bare": bare}))
"""


def test_every_file_is_one_module_even_with_the_checkout_on_the_path() -> None:
    # run from the repository root, as `python -m evostream.cli` and pytest do: its folders are on sys.path there
    done = subprocess.run(
        [sys.executable, "-c", TWO_NAMES, str(ROOT), *FOLDERS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    found = json.loads(done.stdout.splitlines()[-1])
    assert found["modules"] > 100, found
    assert found["twice"] == {}
    assert found["bare"] == []


def test_the_wheel_installs_one_top_level_package_with_its_data(wheel: Path) -> None:
    assert top_level(wheel) == {"evostream"}
    import zipfile

    names = set(zipfile.ZipFile(wheel).namelist())
    for shipped in (
        "evostream/schemas/avro/GenerationStep.v1.avsc",
        "evostream/models/default_model/weights/model.safetensors",
        "evostream/core/stack/resources/pom.xml",
        "evostream/stream_processors/drift/policies/default.json",
        "evostream/api/static/index.html",
        "evostream/api/static/app.js",
        "evostream/api/static/vendor/uPlot.iife.min.js",
    ):
        assert shipped in names, shipped
    assert not [n for n in names if "node_modules" in n]


def test_the_installed_wheel_runs_from_its_own_files(wheel_python: Path, tmp_path: Path) -> None:
    probe = (
        "import importlib.metadata as md, json, evostream.schemas.codec as c, evostream.plugins.discovery as d\n"
        "print(json.dumps({'codec': c.__file__, 'sinks': sorted(d.available())}))"
    )
    done = subprocess.run(
        [str(wheel_python), "-c", probe],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    found = json.loads(done.stdout)
    assert found["codec"].startswith(str(wheel_python.parents[1])), found  # the venv's copy, not the checkout
    assert {"sqlite", "prometheus", "datadog", "wandb", "otlp"} <= set(found["sinks"])
    bare = subprocess.run(
        [str(wheel_python), "-c", "import schemas"], cwd=tmp_path, env=_env(), capture_output=True, text=True
    )
    assert bare.returncode != 0 and "No module named 'schemas'" in bare.stderr
    cli = subprocess.run(
        [str(wheel_python), "-m", "evostream.cli", "--help"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 0 and "serve" in cli.stdout, cli.stderr[-2000:]


def _env() -> dict[str, str]:
    """This environment without PYTHONPATH: a path naming a checkout would hide the wheel's own files."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _get(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.headers.get("content-type", ""), r.read()


@pytest.mark.integration
def test_the_installed_wheel_serves_the_dashboard(wheel_python: Path, kafka: str, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "api.log"
    evostream = wheel_python.with_name("evostream")  # the console script the wheel installed
    cmd = [str(evostream), "api", "--port", str(port), "--bootstrap", kafka]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=log.open("wb"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                status, _, page = _get(base + "/")
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-4000:]
                time.sleep(0.5)
        assert status == 200 and b'src="/static/vendor/uPlot.iife.min.js"' in page
        status, kind, script = _get(base + "/static/vendor/uPlot.iife.min.js")
        assert status == 200 and "javascript" in kind and b"uPlot" in script and len(script) > 10_000
        status, kind, app = _get(base + "/static/app.js")
        assert status == 200 and "javascript" in kind and len(app) > 1000
    finally:
        proc.terminate()
        proc.wait(30)
