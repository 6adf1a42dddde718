"""Outcomes: whether a generation was right, as the log learns it after the fact (``evo.outcomes``).

``outcome`` makes a valid record (the writers' one check); ``OutcomeBook`` folds records in log order into what
stands: a retried write (the same ``outcome_id``) counts once, and for each trace and actor the latest label stands
(``recorded_at_us``, then the offset), so a person who changes their mind is heard and a retry is not counted twice.
A trace's score is the mean of its actors' standing scores. Pure: no Kafka, no clock."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import get_args

from evostream.core.errors import EvoError
from evostream.schemas.records import Outcome, OutcomeLabel, OutcomeSource

LABELS: tuple[str, ...] = get_args(OutcomeLabel)
SOURCES: tuple[str, ...] = get_args(OutcomeSource)


class OutcomeError(EvoError):
    """A label that is not one: outside the set, a score outside [0, 1], no trace."""


def outcome(
    trace_id: str,
    model_version: str,
    label: str,
    *,
    source: str,
    actor: str,
    recorded_at_us: int,
    score: float | None = None,
    note: str = "",
    outcome_id: str | None = None,
) -> Outcome:
    """A checked Outcome record: RIGHT is score 1, WRONG score 0, GRADED needs a score in [0, 1]; a fresh id unless
    the writer gives one (the same id again is a retry of the same label)."""
    if not trace_id:
        raise OutcomeError("an outcome needs the trace it judges")
    if label not in LABELS:
        raise OutcomeError(f"label {label!r} is not one of {', '.join(LABELS)}")
    if source not in SOURCES:
        raise OutcomeError(f"source {source!r} is not one of {', '.join(SOURCES)}")
    fixed = {"RIGHT": 1.0, "WRONG": 0.0}.get(label)
    if fixed is not None and score is not None and score != fixed:
        raise OutcomeError(f"a {label} label has score {fixed:g}, not {score:g}")
    value = fixed if fixed is not None else score
    if value is None or not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise OutcomeError(f"a GRADED label needs a score in [0, 1], got {score!r}")
    return {
        "outcome_id": outcome_id or uuid.uuid4().hex,
        "trace_id": trace_id,
        "model_version": model_version,
        "label": label,  # type: ignore[typeddict-item]  # checked against LABELS above
        "score": float(value),
        "source": source,  # type: ignore[typeddict-item]  # checked against SOURCES above
        "actor": actor,
        "note": note,
        "recorded_at_us": int(recorded_at_us),
    }


@dataclass(frozen=True)
class Standing:
    """One actor's label of one trace as it stands."""

    score: float
    label: str
    source: str
    actor: str
    note: str
    recorded_at_us: int
    offset: int
    outcome_id: str


class OutcomeBook:
    """What the outcomes folded so far say, per trace."""

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._by_trace: dict[str, dict[str, Standing]] = {}
        self.retries = 0
        """Records dropped because their outcome_id was seen before."""

    def add(self, rec: Outcome, offset: int) -> bool:
        """Fold one record read at ``offset``; False for a retry of a label already folded."""
        if rec["outcome_id"] in self._seen:
            self.retries += 1
            return False
        self._seen.add(rec["outcome_id"])
        new = Standing(
            rec["score"],
            rec["label"],
            rec["source"],
            rec["actor"],
            rec["note"],
            rec["recorded_at_us"],
            offset,
            rec["outcome_id"],
        )
        actors = self._by_trace.setdefault(rec["trace_id"], {})
        old = actors.get(rec["actor"])
        if old is None or (new.recorded_at_us, new.offset) >= (old.recorded_at_us, old.offset):
            actors[rec["actor"]] = new
        return True

    def extend(self, recs: Iterable[tuple[Outcome, int]]) -> OutcomeBook:
        for rec, offset in recs:
            self.add(rec, offset)
        return self

    def labels(self, trace_id: str) -> list[Standing]:
        """The standing label of each actor who judged the trace, by actor."""
        return [s for _, s in sorted(self._by_trace.get(trace_id, {}).items())]

    def score(self, trace_id: str) -> float | None:
        """How right the trace was (the mean of its actors' standing scores); None when nobody said."""
        standing = self._by_trace.get(trace_id)
        if not standing:
            return None
        return sum(s.score for s in standing.values()) / len(standing)

    def ids(self) -> list[str]:
        """The ids of every label folded (retries counted once), sorted: what a digest of the labels is made of."""
        return sorted(self._seen)

    def traces(self) -> list[str]:
        """Every labelled trace, sorted."""
        return sorted(self._by_trace)

    def __len__(self) -> int:
        return len(self._by_trace)
