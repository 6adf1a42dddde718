"""The sink plugin API: subclass ``Sink``, register the class under the entry-point group ``evostream.sinks`` in
your distribution, and ``evostream sinks run --sinks yourname`` runs it, exactly as it runs the built-in ones:

    [project.entry-points."evostream.sinks"]
    yourname = "your_package.module:YourSink"

A sink is handed decoded records in batches, one consumer group per sink (``evostream-sink-<name>``), and answers
each call with a ``Result``; what the answers mean (retries, dead letters, when positions are committed) is written
in ``consumers.sinks.contract``, and ``tests/plugins/contract.py`` is the shared test every sink passes."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from evostream.consumers.sinks.contract import Positions, Record, Result, Status
from evostream.core.errors import SinkConfigError, SinkError
from evostream.schemas.catalog import ALERTS, COMPLETIONS, DRIFT, GOVERNANCE, PROFILES, RISK

__all__ = [
    "DEFAULT_TOPICS",
    "ENTRY_POINT_GROUP",
    "Positions",
    "Record",
    "Result",
    "Sink",
    "SinkConfigError",
    "SinkContext",
    "SinkError",
    "Status",
]

ENTRY_POINT_GROUP = "evostream.sinks"
DEFAULT_TOPICS: tuple[str, ...] = (COMPLETIONS, RISK, ALERTS, DRIFT, PROFILES, GOVERNANCE)
"""What a sink reads unless it says otherwise (step events only where a sink asks for them: they are many)."""


@dataclass(frozen=True)
class SinkContext:
    """What the runner gives a sink: its name, a folder of its own, and its options.

    Options come from the environment as ``EVOSTREAM_SINK_<NAME>_<OPTION>`` (``EVOSTREAM_SINK_SQLITE_PATH``) or from
    ``--option name.option=value`` on the command line; option names are lower case."""

    name: str
    data_dir: Path
    options: Mapping[str, str] = field(default_factory=dict)
    on_command_line: frozenset[str] = frozenset()
    """The options given with ``--option`` (``ps`` shows them to every user of the machine: never a secret)."""

    @staticmethod
    def from_env(name: str, data_dir: Path, overrides: Mapping[str, str] | None = None) -> SinkContext:
        prefix = f"EVOSTREAM_SINK_{name.upper().replace('-', '_')}_"
        opts = {k[len(prefix) :].lower(): v for k, v in os.environ.items() if k.startswith(prefix)}
        return SinkContext(name, data_dir, {**opts, **(overrides or {})}, frozenset(overrides or {}))

    def secret(self, option: str, env: str | None = None) -> str | None:
        """A secret option: read from the file ``<option>_file`` names, else from the environment
        (``EVOSTREAM_SINK_<NAME>_<OPTION>``, or ``env``); SinkConfigError if it came on the command line."""
        if option in self.on_command_line:
            raise SinkConfigError(
                f"sink {self.name!r}: {option} on the command line shows in `ps` to every user of the machine; "
                f"set {self.env_name(option)}, or --option {self.name}.{option}_file=PATH (a file only you read)"
            )
        path = self.options.get(f"{option}_file")
        if path:
            try:
                return Path(path).expanduser().read_text().strip() or None
            except OSError as e:
                raise SinkConfigError(f"sink {self.name!r}: cannot read {option}_file {path!r}: {e}") from e
        return self.options.get(option) or (os.environ.get(env) if env else None)

    def env_name(self, option: str) -> str:
        return f"EVOSTREAM_SINK_{self.name.upper().replace('-', '_')}_{option.upper()}"

    def option(self, option: str, default: str | None = None) -> str | None:
        return self.options.get(option, default)

    def require(self, option: str) -> str:
        value = self.options.get(option)
        if not value:
            raise SinkConfigError(
                f"sink {self.name!r} needs the option {option!r}: set {self.env_name(option)} or "
                f"pass --option {self.name}.{option}=VALUE"
            )
        return value

    def number(self, option: str, default: float) -> float:
        text = self.options.get(option)
        if text is None:
            return default
        try:
            return float(text)
        except ValueError as e:
            raise SinkConfigError(
                f"sink {self.name!r}: option {option!r} must be a number, got {text!r} ({self.env_name(option)})"
            ) from e


class Sink(ABC):
    """One destination for reports. Subclasses set ``topics`` when they read other topics than ``DEFAULT_TOPICS``
    and implement ``write``; ``flush``, ``positions`` and ``close`` have defaults for sinks that write through."""

    topics: tuple[str, ...] = DEFAULT_TOPICS
    """What the sink reads; a class sets it, or an instance from its options (OTLP reads steps when asked to)."""
    flush_interval_s: float = 0.0
    """How often the runner calls ``flush`` and then commits (0: after every batch). A sink whose flush is costly
    (W&B finishes its runs) asks for less; records delivered since the last flush are read again after a crash."""

    def __init__(self, ctx: SinkContext) -> None:
        self.ctx = ctx
        self.name = ctx.name

    @abstractmethod
    def write(self, records: Sequence[Record]) -> Result:
        """Apply a batch (idempotently by ``Record.key``); see ``consumers.sinks.contract`` for what to answer."""

    def flush(self) -> Result:
        """Make what was written durable."""
        return Result.ok()

    def positions(self) -> Positions:
        """The next offset to read per (topic, partition), when the sink stores it with its rows; else ``{}``."""
        return {}

    def close(self) -> None:  # noqa: B027 (a sink that holds nothing has nothing to release)
        """Flush what can be flushed and release everything."""
