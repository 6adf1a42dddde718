"""Finding sinks by name through the entry-point group ``evostream.sinks``, as the OpenTelemetry SDK finds its
exporters: the built-in sinks are registered in evostream's own ``pyproject.toml`` exactly as a third party registers
one, and a comma-separated setting (``EVOSTREAM_SINKS=sqlite,prometheus`` or ``--sinks``) picks them."""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import EntryPoint, entry_points

from evostream.core.errors import SinkError
from evostream.plugins.api import ENTRY_POINT_GROUP, Sink

DEFAULT_SINKS = "sqlite"


def available() -> dict[str, EntryPoint]:
    """Every sink installed in this environment, by name."""
    return {ep.name: ep for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)}


def parse(names: str | Sequence[str]) -> list[str]:
    """``"sqlite, prometheus"`` or ``["sqlite", "prometheus"]`` as a list of names; none, or one twice, is an error."""
    items = names.split(",") if isinstance(names, str) else list(names)
    out = [n.strip() for n in items if n.strip()]
    if not out:
        raise SinkError(f"no sink named: give a comma-separated list of {ENTRY_POINT_GROUP} entry points, e.g. sqlite")
    doubled = sorted({n for n in out if out.count(n) > 1})
    if doubled:
        raise SinkError(f"sink {', '.join(map(repr, doubled))} named twice in {','.join(out)!r}")
    return out


def _install_hint(ep: EntryPoint) -> str:
    if ep.extras:
        package = ep.dist.name if ep.dist is not None else "evostream"
        return f"pip install '{package}[{','.join(ep.extras)}]'"
    return f"pip install '{ep.dist.name}'" if ep.dist is not None else "install the package that provides it"


def load_one(name: str, installed: dict[str, EntryPoint] | None = None) -> type[Sink]:
    """The Sink class registered as ``name``; a SinkError that says what to do when it cannot be had."""
    installed = available() if installed is None else installed
    ep = installed.get(name)
    if ep is None:
        known = ", ".join(installed) or "none"
        raise SinkError(f"no sink named {name!r} in the entry-point group {ENTRY_POINT_GROUP!r}; installed: {known}")
    try:
        obj = ep.load()
    except ImportError as e:
        missing = e.name or str(e)
        if ep.module == missing or ep.module.startswith(f"{missing}."):
            raise SinkError(
                f"sink {name!r}: its module {ep.module} is not installed ({ep.value}); reinstall the "
                "package that registers it"
            ) from e
        raise SinkError(f"sink {name!r} needs {missing}, which is not installed: {_install_hint(ep)}") from e
    except Exception as e:  # a broken plugin module: say which entry point
        raise SinkError(f"sink {name!r} ({ep.value}) failed to load: {type(e).__name__}: {e}") from e
    if not (isinstance(obj, type) and issubclass(obj, Sink)):
        raise SinkError(
            f"the entry point {name!r} = {ep.value!r} in the group {ENTRY_POINT_GROUP!r} is {obj!r}, not a subclass "
            "of evostream.plugins.api.Sink"
        )
    return obj


def load(names: str | Sequence[str]) -> list[tuple[str, type[Sink]]]:
    """The sinks named (comma-separated or a list), in order, each loaded and checked."""
    installed = available()
    return [(name, load_one(name, installed)) for name in parse(names)]
