"""What the log says about a served model version, read back for evolution: the traffic it answered (the
distillation set and the agreement check), the FFN firing counts the producer streamed (dormant neurons without
rerunning the model), and the token ids it read and wrote (which embedding rows are used).

Requests and completions are joined on ``request_id``; only completions of the version asked about, without an
error, count, and not its shadow answers (role SHADOW: a rollout's mirror, never returned: no request's answer) nor
its partial answers (finish ESCALATED: the router moved the request to a stronger model mid-answer, so the partial
is no answer to learn from). What is learnt from a route is the other side: the reference's
answer to a request handed over from the version, mid-answer (its partial is on the log) or before generation (a
RouteDecision on evo.routes of stage PROMPT that chose the reference over the version), is a distillation target for
the version (``reference_pairs``, each a ``LabelOnly``: the student learns the reference's answer by cross-entropy
alone, not the parent's distribution, which is what failed there).

The newest ``max_pairs`` are kept, and nothing more is held: the completions are read first into a ring of
``max_pairs``, then the requests, keeping only the prompts those completions answer (reading the requests first
held every prompt of the topic's 7 days, inside the API's ``/evolve`` too). Requests expire before their completions
(7 days against 30), so the completions that still have a request are the newest ones: the ring's last ``max_pairs``
with a request are the last ``max_pairs`` of the join.

A NeuronCounts snapshot that does not fit its own shape (its counts are not ``num_layers`` x ``ffn_width`` int32s) is
skipped and reported with the reason, never a failed cycle."""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from evostream.core.bus.reader import TopicReader
from evostream.schemas.catalog import COMPLETIONS, NEURONS, REQUESTS, ROUTES

I64 = npt.NDArray[np.int64]
REQUESTS_BATCH = 64
"""Requests fetched at a time: a fetched batch is held whole (each record's bytes), and a prompt may be large."""
Answer = tuple[str, str, list[int]]
"""(request_id, the version's answer, its output token ids)."""


class LabelOnly(NamedTuple):
    """A (prompt, answer) pair learnt from its answer alone (cross-entropy, no teacher's distribution): the
    reference's answer to a request the version handed over."""

    prompt: str
    answer: str


@dataclass
class Observed:
    version: str
    pairs: list[tuple[str, str]] = field(default_factory=list)
    """(prompt, the version's answer), oldest first."""
    reference_pairs: list[LabelOnly] = field(default_factory=list)
    """(prompt, the reference's answer) of the requests the router handed over from the version to the reference,
    mid-answer or before generation, in the order they were handed over."""
    output_token_ids: list[list[int]] = field(default_factory=list)
    neuron_counts: I64 | None = None
    """Summed NeuronCounts of the version: [layers of the generating stack, FFN width]."""
    neuron_steps: int = 0
    """Generation steps those counts cover (a neuron's firing rate is its count / steps)."""
    skipped: list[str] = field(default_factory=list)
    """Records of the version left out, each with why (a NeuronCounts snapshot of an inconsistent shape)."""

    @property
    def prompts(self) -> list[str]:
        return [p for p, _ in self.pairs]

    @property
    def targets(self) -> list[tuple[str, str]]:
        """What a student of the version learns from the log: its own answers and the reference's answers to the
        requests it had to hand over (``LabelOnly``)."""
        return [*self.pairs, *self.reference_pairs]


def is_answer(rec: Mapping[str, Any]) -> bool:
    """An answer: no error, not a partial left by an escalation, and not a shadow answer (a candidate's answer to a
    mirrored request, never returned: neither the version's traffic nor the answer a request was handed over to)."""
    return (
        rec["error"] is None
        and rec["finish_reason"] not in ("ESCALATED", "ERROR")
        and rec.get("role", "ANSWER") != "SHADOW"
    )


def keep_answer(ring: deque[Answer], rec: Mapping[str, Any], version: str) -> None:
    if rec["model_version"] == version and is_answer(rec):
        ring.append((rec["request_id"], rec["output_text"], list(rec["output_token_ids"])))


def last_answers(completions: Iterable[Mapping[str, Any]], version: str, max_pairs: int) -> deque[Answer]:
    """The last ``max_pairs`` answers of ``version`` (``is_answer``), oldest first; never more held at once."""
    ring: deque[Answer] = deque(maxlen=max_pairs)
    for rec in completions:
        keep_answer(ring, rec, version)
    return ring


class HandedOver:
    """The other models' answers to the last ``max_pairs`` requests the router handed over from ``version``: those it
    began and handed over mid-answer (its ESCALATED partial, ``add``) and those sent to the reference before
    generation (a PROMPT decision that chose the reference with ``version`` as the self candidate, ``decided``).
    Completions are keyed by trace, so a reference's answer may be read before the partial it replaced: the last
    ``held`` answers of other versions wait for theirs (bounded; one older than that is not matched)."""

    def __init__(self, version: str, max_pairs: int, held: int | None = None) -> None:
        self.version = version
        self._handed: OrderedDict[str, None] = OrderedDict()
        self._answers: OrderedDict[str, str] = OrderedDict()
        self.max_pairs = max_pairs
        self.held = 4 * max_pairs if held is None else held

    def _hand(self, rid: str) -> None:
        self._handed[rid] = None
        self._handed.move_to_end(rid)
        if len(self._handed) > self.max_pairs:
            self._handed.popitem(last=False)

    def decided(self, rec: Mapping[str, Any]) -> None:
        """A RouteDecision: a request sent to the reference before the version generated anything."""
        if (
            rec["stage"] == "PROMPT"
            and rec["chosen"] == "reference"
            and any(c["target"] == "self" and c["model_version"] == self.version for c in rec["candidates"])
        ):
            self._hand(str(rec["request_id"]))

    def add(self, rec: Mapping[str, Any]) -> None:
        """A Completion: the version's partial (handed over mid-answer), or another version's answer."""
        rid = str(rec["request_id"])
        if rec["model_version"] == self.version and rec["finish_reason"] == "ESCALATED":
            self._hand(rid)
        elif rec["model_version"] != self.version and is_answer(rec):
            self._answers[rid] = str(rec["output_text"])
            self._answers.move_to_end(rid)
            if len(self._answers) > self.held:
                self._answers.popitem(last=False)

    def answers(self) -> list[tuple[str, str]]:
        """(request_id, the answer the request was handed over to), in the order they were handed over."""
        return [(rid, self._answers[rid]) for rid in self._handed if rid in self._answers]


def prompts_of(requests: Iterable[Mapping[str, Any]], wanted: set[str]) -> dict[str, str]:
    """The prompts of the requests in ``wanted`` (the last one read, for an id sent twice), and of no other."""
    return {rec["request_id"]: rec["prompt"] for rec in requests if rec["request_id"] in wanted}


def counts_problem(rec: Mapping[str, Any]) -> str | None:
    """Why a NeuronCounts snapshot cannot be summed, or None."""
    layers, width, size = rec["num_layers"], rec["ffn_width"], len(rec["counts"])
    if layers <= 0 or width <= 0 or rec["steps"] < 0:
        return f"num_layers {layers}, ffn_width {width} and steps {rec['steps']} must be positive"
    if size != 4 * layers * width:
        return f"{size} bytes of counts, not {layers} layers x {width} neurons of 4 bytes"
    return None


def read_observed(
    bootstrap: str,
    version: str,
    max_pairs: int = 5000,
    idle_s: float = 2.0,
    progress: Callable[[str], None] = lambda _: None,
) -> Observed:
    """Read ``evo.routes``, ``evo.completions``, ``evo.requests`` and ``evo.neurons`` from their start until each goes
    idle."""
    seen = Observed(version)
    answers: deque[Answer] = deque(maxlen=max_pairs)
    handed = HandedOver(version, max_pairs)
    with TopicReader(bootstrap, ROUTES, "RouteDecision", idle_s=idle_s, name="evolution-routes") as reader:
        for rec in reader:
            handed.decided(rec)
    with TopicReader(bootstrap, COMPLETIONS, "Completion", idle_s=idle_s, name="evolution-completions") as reader:
        for rec in reader:
            keep_answer(answers, rec, version)
            handed.add(rec)
    handed_over = handed.answers()
    with TopicReader(
        bootstrap, REQUESTS, "InferenceRequest", idle_s=idle_s, batch=REQUESTS_BATCH, name="evolution-requests"
    ) as reader:
        prompts = prompts_of(reader, {rid for rid, _, _ in answers} | {rid for rid, _ in handed_over})
    answered = [(prompts[rid], out, ids) for rid, out, ids in answers if rid in prompts]
    seen.pairs = [(p, out) for p, out, _ in answered]
    seen.reference_pairs = [LabelOnly(prompts[rid], out) for rid, out in handed_over if rid in prompts]
    seen.output_token_ids = [ids for _, _, ids in answered]
    with TopicReader(bootstrap, NEURONS, "NeuronCounts", idle_s=idle_s, name="evolution-neurons") as reader:
        for rec in reader:
            if rec["model_version"] != version:
                continue
            problem = counts_problem(rec)
            if problem is not None:
                seen.skipped.append(f"NeuronCounts {rec['snapshot_id']}: {problem}")
                continue
            counts = np.frombuffer(rec["counts"], dtype="<i4").astype(np.int64)
            counts = counts.reshape(rec["num_layers"], rec["ffn_width"])
            if seen.neuron_counts is None or seen.neuron_counts.shape != counts.shape:
                seen.neuron_counts = np.zeros_like(counts)
                seen.neuron_steps = 0
            seen.neuron_counts += counts
            seen.neuron_steps += rec["steps"]
    for why in seen.skipped:
        progress(f"log: skipped {why}")
    progress(
        f"log: {len(seen.pairs)} answered requests of {version} (of the last {len(answers)} completions), "
        f"{len(seen.reference_pairs)} reference answers to requests handed over from it, FFN counts "
        f"over {seen.neuron_steps} steps" + (f"; {len(seen.skipped)} records skipped" if seen.skipped else "")
    )
    return seen
