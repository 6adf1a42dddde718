"""Teacher-forcing batches of (prompt, answer) pairs, the one format distillation, importance and adapter training
share: seq2seq, the prompt to the encoder and the answer as labels; causal, prompt, a space, the answer and EOS in
one row, with labels only on the answer part (and -100 everywhere else, padding included)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

Pair = tuple[str, str]
"""(prompt, answer)."""


def teacher_forcing(
    tok: PreTrainedTokenizerBase, pairs: Sequence[Pair], seq2seq: bool, device: torch.device
) -> dict[str, Tensor]:
    """``input_ids``, ``attention_mask`` and ``labels`` for ``pairs`` on ``device``."""
    prompts, answers = [p for p, _ in pairs], [a for _, a in pairs]
    if seq2seq:
        enc = tok(prompts, return_tensors="pt", padding=True)
        labels = tok(answers, return_tensors="pt", padding=True).input_ids
        labels[labels == tok.pad_token_id] = -100
        return {
            "input_ids": enc.input_ids.to(device),
            "attention_mask": enc.attention_mask.to(device),
            "labels": labels.to(device),
        }
    rows, label_rows = [], []
    for p, a in pairs:
        p_ids = tok(p, add_special_tokens=False).input_ids
        a_ids = [*tok(" " + a, add_special_tokens=False).input_ids, tok.eos_token_id]
        rows.append(p_ids + a_ids)
        label_rows.append([-100] * len(p_ids) + a_ids)
    width = max(len(r) for r in rows)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    return {
        "input_ids": torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device),
        "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device),
        "labels": torch.tensor([r + [-100] * (width - len(r)) for r in label_rows], device=device),
    }
