"""What the log says about a served model version, read back for evolution: the traffic it answered (the
distillation set and the agreement check), the FFN firing counts the producer streamed (dormant neurons without
rerunning the model), and the token ids it read and wrote (which embedding rows are used).

Requests and completions are joined on ``request_id``; only completions of the version asked about, without an
error, count. The newest ``max_pairs`` are kept, and nothing more is held: the completions are read first into a ring
of ``max_pairs``, then the requests, keeping only the prompts those completions answer (reading the requests first
held every prompt of the topic's 7 days, inside the API's ``/evolve`` too). Requests expire before their completions
(7 days against 30), so the completions that still have a request are the newest ones: the ring's last ``max_pairs``
with a request are the last ``max_pairs`` of the join.

A NeuronCounts snapshot that does not fit its own shape (its counts are not ``num_layers`` x ``ffn_width`` int32s) is
skipped and reported with the reason, never a failed cycle."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from evostream.core.bus.reader import TopicReader
from evostream.schemas.catalog import COMPLETIONS, NEURONS, REQUESTS

I64 = npt.NDArray[np.int64]
REQUESTS_BATCH = 64
"""Requests fetched at a time: a fetched batch is held whole (each record's bytes), and a prompt may be large."""
Answer = tuple[str, str, list[int]]
"""(request_id, the version's answer, its output token ids)."""


@dataclass
class Observed:
    version: str
    pairs: list[tuple[str, str]] = field(default_factory=list)
    """(prompt, the version's answer), oldest first."""
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


def last_answers(completions: Iterable[Mapping[str, Any]], version: str, max_pairs: int) -> deque[Answer]:
    """The last ``max_pairs`` error-free completions of ``version``, oldest first; never more held at once."""
    ring: deque[Answer] = deque(maxlen=max_pairs)
    for rec in completions:
        if rec["model_version"] == version and rec["error"] is None:
            ring.append((rec["request_id"], rec["output_text"], list(rec["output_token_ids"])))
    return ring


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
    """Read ``evo.completions``, ``evo.requests`` and ``evo.neurons`` from their start until each goes idle."""
    seen = Observed(version)
    with TopicReader(bootstrap, COMPLETIONS, "Completion", idle_s=idle_s, name="evolution-completions") as reader:
        answers = last_answers(reader, version, max_pairs)
    with TopicReader(
        bootstrap, REQUESTS, "InferenceRequest", idle_s=idle_s, batch=REQUESTS_BATCH, name="evolution-requests"
    ) as reader:
        prompts = prompts_of(reader, {rid for rid, _, _ in answers})
    answered = [(prompts[rid], out, ids) for rid, out, ids in answers if rid in prompts]
    seen.pairs = [(p, out) for p, out, _ in answered]
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
        f"log: {len(seen.pairs)} answered requests of {version} (of the last {len(answers)} completions), FFN counts "
        f"over {seen.neuron_steps} steps" + (f"; {len(seen.skipped)} records skipped" if seen.skipped else "")
    )
    return seen
