"""Finding a trace in the log by its id: its Completion (which version answered, when), for commands that act on a
trace someone names (provenance, feedback). A scan of evo.completions from its start, stopped at the first match; the
topic is keyed by trace id, so a partition-targeted read is the next step when it grows."""

from __future__ import annotations

from evostream.core.bus.reader import TopicReader
from evostream.schemas.catalog import COMPLETIONS
from evostream.schemas.records import Completion


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
