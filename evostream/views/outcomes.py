"""The labels on ``evo.outcomes``, folded: what the log says about whether traces were right. One reader for the
commands that learn from them (``risk train``), replay against them (``rescore``) and the tests that check them."""

from __future__ import annotations

from collections.abc import Callable

from evostream.core.bus.reader import TopicReader
from evostream.schemas.catalog import OUTCOMES
from evostream.schemas.records import Outcome
from evostream.stream_processors.risk.outcomes import OutcomeBook


def read_outcomes(
    server: str, keep: Callable[[Outcome], bool] | None = None, timeout_s: float | None = None
) -> OutcomeBook:
    """Every outcome on the topic that ``keep`` keeps (all by default), folded in the order read (per trace, the
    order written: a trace's labels share its partition); read until the topic goes idle."""
    book = OutcomeBook()
    with TopicReader(server, OUTCOMES, "Outcome", idle_s=3.0, timeout_s=timeout_s, name="read-outcomes") as reader:
        for n, rec in enumerate(reader):
            label = Outcome(**rec)  # type: ignore[typeddict-item]  # the reader decodes Outcome records
            if keep is None or keep(label):
                book.add(label, n)
    return book
