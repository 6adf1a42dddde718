"""``evaluate(model, tokenizer)``: per-task exact-match accuracy on the held-out suite."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from functools import cache

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from evostream.models.suite.tasks import Example, make_split

EVAL_PER_TASK = 200


@cache
def eval_set(per_task: int = EVAL_PER_TASK) -> tuple[Example, ...]:
    """The held-out evaluation examples (fixed; the training stream never contains their prompts)."""
    return tuple(make_split("eval", per_task))


@torch.inference_mode()
def predict(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    batch_size: int = 256,
    max_new_tokens: int = 16,
) -> list[str]:
    """Greedy answers for ``prompts``."""
    was_training = model.training
    model.eval()
    out: list[str] = []
    device = next(model.parameters()).device
    for i in range(0, len(prompts), batch_size):
        enc = tokenizer(list(prompts[i : i + batch_size]), return_tensors="pt", padding=True).to(device)
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
        out.extend(tokenizer.batch_decode(gen, skip_special_tokens=True))
    model.train(was_training)
    return out


def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example] | None = None,
) -> dict[str, float]:
    """Exact-match accuracy per task (and ``"mean"``) of ``model`` on ``examples`` (default: the held-out suite)."""
    examples = list(examples if examples is not None else eval_set())
    answers = predict(model, tokenizer, [e.prompt for e in examples])
    hits: dict[str, list[bool]] = defaultdict(list)
    for e, a in zip(examples, answers, strict=True):
        hits[e.task].append(a.strip() == e.answer)
    acc = {task: sum(h) / len(h) for task, h in sorted(hits.items())}
    acc["mean"] = sum(acc.values()) / len(acc)
    return acc
