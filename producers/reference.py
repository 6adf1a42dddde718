"""Reference runs: a model generates on known prompts in-process and yields exactly the GenerationStep records the
producer would publish, for calibrating risk policies and measuring how well risk predicts wrong answers.

Generating is a producer's job; composing a reference run with the processors' calibrator is wiring, done by the CLI
(``evostream.cli.calibrate``)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from evostream.models.loading import LoadedModel
from evostream.producers.generate import GenParams, InstrumentedGenerator
from evostream.producers.records import TokenTexts
from evostream.producers.steps import StepBatch, TraceMeta, step_records


@dataclass
class Traced:
    prompt: str
    output: str
    steps: list[dict[str, Any]]


def run_traced(
    loaded: LoadedModel,
    prompts: Sequence[str],
    batch_size: int = 32,
    max_new_tokens: int = 24,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> Iterator[Traced]:
    """Generate greedily for ``prompts``; each result carries its step records in order."""
    gen = InstrumentedGenerator(loaded)
    texts = TokenTexts(loaded.tokenizer)
    params = GenParams(max_new_tokens=max_new_tokens)
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start : start + batch_size])
            metas = [TraceMeta(uuid.uuid4().hex, f"ref-{start + i}", "", "reference", 0) for i in range(len(chunk))]
            per_trace: dict[str, list[dict[str, Any]]] = {m.trace_id: [] for m in metas}

            def on_step(sb: StepBatch, metas: list[TraceMeta] = metas, per: dict[str, Any] = per_trace) -> None:
                for rec in step_records(sb, metas, loaded.version, gen.signal, texts.rows(sb)):
                    per[rec["trace_id"]].append(rec)

            results = gen.generate(chunk, params, on_step)
            for p, m, res in zip(chunk, metas, results, strict=True):
                out = loaded.tokenizer.decode(res.token_ids, skip_special_tokens=True)
                yield Traced(p, out, per_trace[m.trace_id])
            progress(min(start + batch_size, len(prompts)), len(prompts))
    finally:
        gen.close()
