"""Token texts for step records, and a request's outcome as a Completion."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from transformers import PreTrainedTokenizerBase

from evostream.core.clock import now_us
from evostream.producers.generate import Generated
from evostream.producers.steps import StepBatch, TraceMeta
from evostream.schemas.records import AnswerRole, ShadowComparison


class TokenTexts:
    """Decodes single token ids, cached (a vocabulary is small, steps are many).

    A model may emit an id its tokenizer cannot decode (an embedding matrix padded past the vocabulary, a model built
    from config); such a step is still reported, with the text ``<id:N>``."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        def decode(i: int) -> str:
            try:
                text: str = tokenizer.decode([i], skip_special_tokens=False)
            except (ValueError, IndexError, KeyError, OverflowError, TypeError):
                return f"<id:{i}>"
            return text

        self._decode = lru_cache(maxsize=65536)(decode)

    def __call__(self, token_id: int) -> str:
        return self._decode(token_id)

    def rows(self, batch: StepBatch) -> list[str]:
        """The text of each row's token at this step."""
        return [self._decode(int(t)) for t in batch.token_ids]


def completion_record(
    meta: TraceMeta,
    model_version: str,
    gen: Generated | None,
    text: str,
    embedding: Sequence[float],
    started_us: int,
    error: str | None = None,
    cost_usd: float = 0.0,
    token_count: int | None = None,
    role: AnswerRole = "ANSWER",
    rollout_id: str | None = None,
) -> dict[str, Any]:
    """The Completion of one request: its text, or its error; ``cost_usd`` from the price table (0: none);
    ``token_count`` where the tokens were counted by another (an HTTP reference reports counts, not ids). ``role``
    SHADOW: a candidate's answer to a mirrored request, never returned; ``rollout_id``: the rollout that sent the
    request to the candidate. The template the prompt was rendered with is ``meta``'s."""
    done = now_us()
    return {
        "trace_id": meta.trace_id,
        "request_id": meta.request_id,
        "reply_to": meta.reply_to,
        "tenant": meta.tenant,
        "model_version": model_version,
        "output_text": text if error is None else "",
        "token_count": token_count if token_count is not None else len(gen.token_ids) if gen else 0,
        "output_token_ids": list(gen.token_ids) if gen else [],
        "prompt_token_count": gen.prompt_tokens if gen else 0,
        "prompt_surprisal_bits": gen.prompt_surprisal_bits if gen else None,
        "prompt_embedding": list(embedding),
        "finish_reason": "ERROR" if error is not None or gen is None else gen.finish_reason,
        "error": error,
        "timings": {
            # a client's clock can say anything (negative, far future): 0 where the difference means nothing, and
            # never a value past Avro's long
            "queue_us": started_us - meta.submitted_at_us if 0 <= meta.submitted_at_us <= started_us else 0,
            "prefill_us": gen.prefill_us if gen else 0,
            "decode_us": gen.decode_us if gen else 0,
            "total_us": done - started_us,
        },
        "completed_at_us": done,
        "cached": False,
        "cached_from": None,
        "cost_usd": cost_usd,
        "role": role,
        "rollout_id": rollout_id,
        "template_version": meta.template_version,
    }


@dataclass(frozen=True)
class Answered:
    """One side of a shadow comparison: the trace that answered, what it generated, its text or its error."""

    version: str
    trace_id: str
    gen: Generated | None
    text: str
    error: str | None

    @property
    def why(self) -> str | None:
        """Why it failed, or None."""
        if self.error is not None:
            return self.error
        return "no answer" if self.gen is None else None

    @property
    def tokens(self) -> int:
        return len(self.gen.token_ids) if self.gen is not None else 0

    @property
    def generation_us(self) -> int:
        """Prefill and decode: the time the model took, queueing and embedding left out."""
        return self.gen.prefill_us + self.gen.decode_us if self.gen is not None else 0


def shadow_comparison(
    meta: TraceMeta, rollout_id: str | None, production: Answered, candidate: Answered
) -> ShadowComparison:
    """The comparison of a mirrored request's two answers: they agree when neither failed and their texts are
    exactly equal."""
    return {
        "request_id": meta.request_id,
        "tenant": meta.tenant,
        "rollout_id": rollout_id,
        "production_version": production.version,
        "candidate_version": candidate.version,
        "production_trace_id": production.trace_id,
        "candidate_trace_id": candidate.trace_id,
        "agree": production.why is None and candidate.why is None and production.text == candidate.text,
        "production_tokens": production.tokens,
        "candidate_tokens": candidate.tokens,
        "production_us": production.generation_us,
        "candidate_us": candidate.generation_us,
        "production_error": production.why,
        "candidate_error": candidate.why,
        "compared_at_us": now_us(),
    }
