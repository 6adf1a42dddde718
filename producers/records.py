"""Token texts for step records, and a request's outcome as a Completion."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from transformers import PreTrainedTokenizerBase

from evostream.core.clock import now_us
from evostream.producers.generate import Generated
from evostream.producers.steps import StepBatch, TraceMeta


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
) -> dict[str, Any]:
    """The Completion of one request: its text, or its error; ``cost_usd`` from the price table (0: none);
    ``token_count`` where the tokens were counted by another (an HTTP reference reports counts, not ids)."""
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
        "template_version": meta.template_version,
    }
