"""What the log says about a served model version, read back for evolution: the traffic it answered (the
distillation set and the agreement check), the FFN firing counts the producer streamed (dormant neurons without
rerunning the model), and the token ids it read and wrote (which embedding rows are used).

Requests and completions are joined on ``request_id``; only completions of the version asked about, without an
error, count. The newest ``max_pairs`` are kept."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from evostream.core.bus.reader import TopicReader
from evostream.schemas.catalog import COMPLETIONS, NEURONS, REQUESTS

I64 = npt.NDArray[np.int64]


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

    @property
    def prompts(self) -> list[str]:
        return [p for p, _ in self.pairs]


def read_observed(
    bootstrap: str,
    version: str,
    max_pairs: int = 5000,
    idle_s: float = 2.0,
    progress: Callable[[str], None] = lambda _: None,
) -> Observed:
    """Read ``evo.requests``, ``evo.completions`` and ``evo.neurons`` from their start until each goes idle."""
    seen = Observed(version)
    prompts: dict[str, str] = {}
    with TopicReader(bootstrap, REQUESTS, "InferenceRequest", idle_s=idle_s, name="evolution-requests") as reader:
        for rec in reader:
            prompts[rec["request_id"]] = rec["prompt"]
    answered: list[tuple[str, str, list[int]]] = []
    with TopicReader(bootstrap, COMPLETIONS, "Completion", idle_s=idle_s, name="evolution-completions") as reader:
        for rec in reader:
            if rec["model_version"] == version and rec["error"] is None and rec["request_id"] in prompts:
                answered.append((prompts[rec["request_id"]], rec["output_text"], list(rec["output_token_ids"])))
    answered = answered[-max_pairs:]
    seen.pairs = [(p, out) for p, out, _ in answered]
    seen.output_token_ids = [ids for _, _, ids in answered]
    with TopicReader(bootstrap, NEURONS, "NeuronCounts", idle_s=idle_s, name="evolution-neurons") as reader:
        for rec in reader:
            if rec["model_version"] != version:
                continue
            counts = np.frombuffer(rec["counts"], dtype="<i4").astype(np.int64)
            counts = counts.reshape(rec["num_layers"], rec["ffn_width"])
            if seen.neuron_counts is None or seen.neuron_counts.shape != counts.shape:
                seen.neuron_counts = np.zeros_like(counts)
                seen.neuron_steps = 0
            seen.neuron_counts += counts
            seen.neuron_steps += rec["steps"]
    progress(
        f"log: {len(seen.pairs)} answered requests of {version} ({len(prompts)} requests read), FFN counts over "
        f"{seen.neuron_steps} steps"
    )
    return seen
