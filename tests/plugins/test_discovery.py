"""Finding sinks by entry point: the built-ins as registered in pyproject.toml, and every way a name can be wrong,
each a SinkError naming the group; broken plugins come from real distributions put on sys.path."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from evostream.core.errors import SinkError
from evostream.plugins.discovery import available, load
from evostream.plugins.sqlite import SqliteSink


def distribution(root: Path, name: str, entry_points: dict[str, str], extras: str = "", module: str = "") -> None:
    """A minimal installed distribution (its dist-info) registering ``entry_points`` in evostream.sinks."""
    info = root / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    extra = "".join(f"Provides-Extra: {e}\n" for e in extras.split(",") if e)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n{extra}")
    (info / "entry_points.txt").write_text(
        "[evostream.sinks]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    )
    if module:
        (root / f"{name.replace('-', '_')}.py").write_text(module)


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for mod in [m for m in sys.modules if m.startswith("broken_")]:
        del sys.modules[mod]


def test_the_built_ins_are_entry_points_like_any_other() -> None:
    found = {name: ep.value for name, ep in available().items()}
    assert {k: found[k] for k in ("sqlite", "prometheus", "datadog", "wandb", "otlp")} == {
        "sqlite": "evostream.plugins.sqlite:SqliteSink",
        "prometheus": "evostream.plugins.prometheus:PrometheusSink",
        "datadog": "evostream.plugins.datadog:DatadogSink [datadog]",
        "wandb": "evostream.plugins.wandb:WandbSink [wandb]",
        "otlp": "evostream.plugins.otlp:OtlpSink [otlp]",
    }
    assert load("sqlite") == [("sqlite", SqliteSink)]
    assert [name for name, _ in load(" prometheus, sqlite ")] == ["prometheus", "sqlite"]


@pytest.mark.parametrize(
    ("names", "message"),
    [
        ("nope", "no sink named 'nope' in the entry-point group 'evostream.sinks'; installed: "),
        ("sqlite,sqlite", "sink 'sqlite' named twice"),
        (" , ", "no sink named: give a comma-separated list of evostream.sinks entry points"),
    ],
)
def test_a_wrong_name_is_a_clear_error(names: str, message: str) -> None:
    with pytest.raises(SinkError) as err:
        load(names)
    assert message in str(err.value)


def test_an_unknown_name_lists_what_is_installed() -> None:
    with pytest.raises(SinkError, match=r"installed: .*otlp.*sqlite"):
        load("x")


def test_an_entry_point_that_is_not_a_sink_names_the_group(site: Path) -> None:
    distribution(site, "broken-type", {"notasink": "json:dumps"})
    with pytest.raises(SinkError) as err:
        load("notasink")
    assert "'notasink' = 'json:dumps' in the group 'evostream.sinks'" in str(err.value)
    assert "not a subclass of evostream.plugins.api.Sink" in str(err.value)


def test_a_missing_optional_dependency_says_what_to_install(site: Path) -> None:
    distribution(
        site,
        "broken-dep",
        {"needsdep": "broken_dep:Sink [fancy]"},
        extras="fancy",
        module="import not_installed_library_xyz\n",
    )
    with pytest.raises(SinkError) as err:
        load("needsdep")
    assert str(err.value) == (
        "sink 'needsdep' needs not_installed_library_xyz, which is not installed: pip install 'broken-dep[fancy]'"
    )


def test_a_plugin_whose_module_is_gone_says_so(site: Path) -> None:
    distribution(site, "broken-gone", {"gone": "broken_gone_module:Sink"})
    with pytest.raises(SinkError, match="its module broken_gone_module is not installed"):
        load("gone")


def test_a_plugin_that_fails_on_import_names_its_entry_point(site: Path) -> None:
    distribution(site, "broken-raise", {"raises": "broken_raise:Sink"}, module="raise RuntimeError('boom')\n")
    with pytest.raises(SinkError, match=r"sink 'raises' \(broken_raise:Sink\) failed to load: RuntimeError: boom"):
        load("raises")


def test_the_cli_says_it_in_one_line(site: Path) -> None:
    import os
    import subprocess

    distribution(
        site,
        "broken-dep2",
        {"needsdep2": "broken_dep2:Sink [fancy]"},
        extras="fancy",
        module="import not_installed_library_xyz\n",
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "evostream.cli", "sinks", "run", "--sinks", "sqlite,needsdep2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: sink 'needsdep2' needs not_installed_library_xyz, which is not installed: "
        "pip install 'broken-dep2[fancy]'"
    ]
