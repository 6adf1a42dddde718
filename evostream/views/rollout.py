"""A rollout's evidence as the log holds it: Completions, RiskAlerts, Outcomes and ShadowComparisons folded into
per-version window statistics (``rollout.gates.WindowStats``) and a summary of the shadow comparisons. Pure: records
in, answers out; ``read_fold`` is the one read of the log, for ``evostream compare``. The rollout controller
(``wiring.rollout``) feeds the same fold from its own consumer.

What counts (docs/rollout.md, "The gates"):

- an answer is a Completion of the version (role ANSWER, and for a candidate also SHADOW: ``stats(..., roles=...)``)
  completed in the window; a response-cache hit (``cached``) is not the version's work and a partial answer handed
  to the reference mid-answer (finish ESCALATED) is not an answer: both are left out; a Completion delivered twice
  counts once (by trace);
- an answer failed when its finish reason is ERROR or it carries an error; its generation time is prefill + decode
  (answers without error only);
- an answer is alerted when any RiskAlert names its trace (EARLY or FINAL, any severity), whenever the alert came;
- an answer is labelled when an Outcome names its trace, and right when its score (the mean of its actors' standing
  labels, ``OutcomeBook``) is at least 0.5."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from evostream.core.bus.reader import TopicReader
from evostream.rollout.gates import WindowStats
from evostream.rollout.stats import percentile
from evostream.schemas.catalog import ALERTS, COMPLETIONS, OUTCOMES, SHADOW
from evostream.schemas.records import Outcome
from evostream.stream_processors.risk.outcomes import OutcomeBook

Record = Mapping[str, Any]
CANDIDATE_ROLES = ("ANSWER", "SHADOW")
"""A candidate's answers: its canary answers and the mirrored ones."""
INCUMBENT_ROLES = ("ANSWER",)
"""An incumbent's answers: the ones it returned."""
RIGHT_FROM = 0.5
"""The score from which a labelled answer counts as right."""
LEAD_US = 300_000_000
"""How much earlier than a window's start its alerts and labels are read: an EARLY alert of an answer that started
before the window and finished in it was written before the window began."""
TOPICS = {COMPLETIONS: "Completion", ALERTS: "RiskAlert", OUTCOMES: "Outcome", SHADOW: "ShadowComparison"}
"""What the fold reads: topic -> record type."""


@dataclass(frozen=True)
class Answer:
    """What the fold keeps of one Completion."""

    version: str
    role: str
    at_us: int
    latency_ms: float
    error: bool
    rollout_id: str | None


@dataclass(frozen=True)
class Comparison:
    """What the fold keeps of one ShadowComparison."""

    production_version: str
    candidate_version: str
    at_us: int
    agree: bool
    production_ms: float
    candidate_ms: float
    production_error: bool
    candidate_error: bool


def answer_of(rec: Record) -> Answer | None:
    """The answer a Completion is, or None for one that is not a version's answer (a cache hit, a partial)."""
    if rec.get("cached") or rec.get("finish_reason") == "ESCALATED":
        return None
    timings = rec.get("timings") or {}
    return Answer(
        version=str(rec["model_version"]),
        role=str(rec.get("role") or "ANSWER"),
        at_us=int(rec["completed_at_us"]),
        latency_ms=(int(timings.get("prefill_us", 0)) + int(timings.get("decode_us", 0))) / 1000.0,
        error=rec.get("finish_reason") == "ERROR" or bool(rec.get("error")),
        rollout_id=rec.get("rollout_id"),
    )


class RolloutFold:
    """The fold: ``add(topic, record)`` for each record read, in any order across topics (alerts and labels come
    after their answers, or before, if the topics are read apart)."""

    def __init__(self) -> None:
        self._answers: dict[str, Answer] = {}
        self._alerted: dict[str, int] = {}
        """trace -> when its first alert was read (its produced_at_us)."""
        self._book = OutcomeBook()
        self._labels = 0
        self._comparisons: dict[str, Comparison] = {}
        """candidate trace -> comparison."""

    def add(self, topic: str, rec: Record) -> None:
        if topic == COMPLETIONS:
            self.add_completion(rec)
        elif topic == ALERTS:
            self.add_alert(rec)
        elif topic == OUTCOMES:
            self.add_outcome(rec)
        elif topic == SHADOW:
            self.add_comparison(rec)

    def add_completion(self, rec: Record) -> None:
        ans = answer_of(rec)
        if ans is not None:
            self._answers.setdefault(str(rec["trace_id"]), ans)

    def add_alert(self, rec: Record) -> None:
        self._alerted.setdefault(str(rec["trace_id"]), int(rec["produced_at_us"]))

    def add_outcome(self, rec: Record) -> None:
        label = Outcome(**rec)  # type: ignore[typeddict-item]  # an Outcome record, as decoded
        self._book.add(label, self._labels)
        self._labels += 1

    def add_comparison(self, rec: Record) -> None:
        self._comparisons.setdefault(
            str(rec["candidate_trace_id"]),
            Comparison(
                production_version=str(rec["production_version"]),
                candidate_version=str(rec["candidate_version"]),
                at_us=int(rec["compared_at_us"]),
                agree=bool(rec["agree"]),
                production_ms=int(rec["production_us"]) / 1000.0,
                candidate_ms=int(rec["candidate_us"]) / 1000.0,
                production_error=bool(rec.get("production_error")),
                candidate_error=bool(rec.get("candidate_error")),
            ),
        )

    def extend(self, topic: str, recs: Iterable[Record]) -> RolloutFold:
        for rec in recs:
            self.add(topic, rec)
        return self

    # --- readers -------------------------------------------------------------------------------------------------
    def answers(
        self,
        version: str,
        since_us: int | None = None,
        until_us: int | None = None,
        roles: Collection[str] = ("ANSWER",),
    ) -> dict[str, Answer]:
        """The version's answers in these roles completed in [since_us, until_us), by trace."""
        return {
            trace: a
            for trace, a in self._answers.items()
            if a.version == version
            and a.role in roles
            and (since_us is None or a.at_us >= since_us)
            and (until_us is None or a.at_us < until_us)
        }

    def stats(
        self,
        version: str,
        since_us: int | None = None,
        until_us: int | None = None,
        roles: Collection[str] = INCUMBENT_ROLES,
    ) -> WindowStats:
        """The version's window statistics over its answers in these roles completed in [since_us, until_us)."""
        answers = self.answers(version, since_us, until_us, roles)
        labelled = correct = 0
        for trace in answers:
            score = self._book.score(trace)
            if score is not None:
                labelled += 1
                correct += score >= RIGHT_FROM
        return WindowStats(
            answers=len(answers),
            errors=sum(a.error for a in answers.values()),
            alerted=sum(1 for trace in answers if trace in self._alerted),
            labelled=labelled,
            correct=correct,
            # generation times of answers only: a shadow answer is generated after its batch's production answers,
            # on a machine still busy sending them, so its time is not comparable with an answer's
            latency_ms=tuple(a.latency_ms for a in answers.values() if not a.error and a.role == "ANSWER"),
        )

    def shadow(
        self, production: str, candidate: str, since_us: int | None = None, until_us: int | None = None
    ) -> dict[str, Any]:
        """The shadow comparisons of ``candidate`` against ``production`` made in [since_us, until_us): how many,
        how many agreed (both answered without error, same text), the errors and generation times of each side."""
        got = [
            c
            for c in self._comparisons.values()
            if c.production_version == production
            and c.candidate_version == candidate
            and (since_us is None or c.at_us >= since_us)
            and (until_us is None or c.at_us < until_us)
        ]
        n = len(got)
        agree = sum(c.agree for c in got)
        prod_ms = [c.production_ms for c in got if not c.production_error]
        cand_ms = [c.candidate_ms for c in got if not c.candidate_error]
        return {
            "comparisons": n,
            "agree": agree,
            "agreement_rate": None if n == 0 else agree / n,
            "production_errors": sum(c.production_error for c in got),
            "candidate_errors": sum(c.candidate_error for c in got),
            "production_p50_ms": percentile(prod_ms, 50),
            "production_p95_ms": percentile(prod_ms, 95),
            "candidate_p50_ms": percentile(cand_ms, 50),
            "candidate_p95_ms": percentile(cand_ms, 95),
        }

    def first_us(self) -> int | None:
        """When the earliest answer held was completed."""
        return min((a.at_us for a in self._answers.values()), default=None)

    def prune(self, before_us: int) -> None:
        """Forget answers and comparisons older than ``before_us``, and alerts older than ``LEAD_US`` before it
        (labels stay: they are few)."""
        self._answers = {t: a for t, a in self._answers.items() if a.at_us >= before_us}
        self._alerted = {t: at for t, at in self._alerted.items() if at >= before_us - LEAD_US}
        self._comparisons = {t: c for t, c in self._comparisons.items() if c.at_us >= before_us}

    def __len__(self) -> int:
        return len(self._answers)


def read_start(topic: str, since_us: int) -> int:
    """Where a topic is read from for a window that starts at ``since_us``: alerts and labels ``LEAD_US`` earlier."""
    return since_us - LEAD_US if topic in (ALERTS, OUTCOMES) else since_us


def read_fold(server: str, since_us: int | None = None, idle_s: float = 3.0) -> RolloutFold:
    """The four topics read from ``since_us`` (``read_start``: every partition from its first record at or after
    it; each topic from its start when None) up to where each partition ended when its read began, folded (without
    ``since_us``: until each goes idle). Under steady traffic a topic is never idle: a read until idle never ends."""
    from evostream.core.bus.admin import PartitionEnds

    fold = RolloutFold()
    ends_of = PartitionEnds(server)
    for topic, schema in TOPICS.items():
        start = None if since_us is None else read_start(topic, since_us)
        with TopicReader(server, topic, schema, since_us=start, idle_s=idle_s, name="read-rollout") as reader:
            ends = ends_of(reader.positions) if start is not None else None

            def caught_up(r: TopicReader = reader, e: Mapping[tuple[str, int], int] | None = ends) -> bool:
                return e is not None and all(r.positions.get(tp, -1) >= end for tp, end in e.items())

            reader.until = caught_up
            fold.extend(topic, reader)
    return fold
