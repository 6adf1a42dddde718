"""Traces in the log: a trace's Completion by its id (which version answered, when), for commands that act on a trace
someone names (provenance, feedback), and whole traces' steps, for what replays them (risk train, rescore). Both scan
their topic from its start; evo.completions is keyed by trace id, so a partition-targeted lookup is the next step
when it grows."""

from __future__ import annotations

from collections.abc import Callable

from evostream.core.bus.reader import TopicReader
from evostream.schemas.catalog import COMPLETIONS, STEPS
from evostream.schemas.records import Completion, GenerationStep


def find_completion(server: str, trace_id: str, timeout_s: float = 30.0) -> Completion | None:
    """The Completion of ``trace_id``, or None when the topic holds none (read until it goes idle, at most
    ``timeout_s``)."""
    found: list[Completion] = []
    with TopicReader(
        server, COMPLETIONS, "Completion", timeout_s=timeout_s, until=lambda: bool(found), name="find-trace"
    ) as reader:
        for rec in reader:
            if rec["trace_id"] == trace_id:
                found.append(rec)  # type: ignore[arg-type]  # the reader decodes Completion records
                break
    return found[0] if found else None


def read_traces(server: str, keep: Callable[[GenerationStep], bool] | None = None) -> dict[str, list[GenerationStep]]:
    """The whole traces on evo.steps among the steps ``keep`` keeps (all by default): per trace its steps 0..n-1 in
    order, a step delivered twice counted once; a trace missing a step is left out. Read until the topic goes idle."""
    by_trace: dict[str, dict[int, GenerationStep]] = {}
    with TopicReader(server, STEPS, "GenerationStep", idle_s=3.0, name="read-traces") as reader:
        for rec in reader:
            step = GenerationStep(**rec)  # type: ignore[typeddict-item]  # the reader decodes GenerationStep records
            if keep is None or keep(step):
                by_trace.setdefault(step["trace_id"], {})[step["step"]] = step
    return {t: [s[i] for i in range(len(s))] for t, s in by_trace.items() if sorted(s) == list(range(len(s)))}
