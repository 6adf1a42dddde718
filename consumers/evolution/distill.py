"""Distillation: a pruned student recovers by learning from its parent on the prompts the log holds.

Pruning without recovery collapses accuracy; a short distillation from the parent brings it back. The training set
is what the model really served (prompts replayed from ``evo.requests`` with the parent's answers from
``evo.completions``, and the reference's answers to the requests the router handed over from the parent, mid-answer
or before generation: there the label is the reference's answer, so the student learns what the parent could not
answer) mixed with the task suite's training stream (whose prompts never overlap the held-out set).
The loss is ``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(labels)`` over the answer tokens: the
teacher's full distribution carries more than its argmax. A ``LabelOnly`` pair (a reference's answer) is learnt with
alpha 0, cross-entropy alone: there the teacher is the parent that failed, and its distribution would pull the
student back to the answer the reference replaced."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.nn import functional as nnf
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from evostream.consumers.evolution.batches import Pair, teacher_forcing
from evostream.consumers.evolution.inputs import LabelOnly
from evostream.core.errors import EvolutionError


@dataclass(frozen=True)
class DistillConfig:
    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 50
    temperature: float = 2.0
    alpha: float = 0.5
    """Weight of the teacher's soft targets; 1 - alpha goes to the labels (0 for a ``LabelOnly`` pair)."""
    seed: int = 0


@dataclass
class DistillReport:
    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    """Mean loss per logged interval."""


def mixed_stream(
    logged: Sequence[Pair], suite: Iterator[Pair], logged_share: float = 0.5, seed: int = 0
) -> Iterator[Pair]:
    """Endless pairs: a ``logged_share`` of them drawn from the logged traffic (cycled, shuffled each pass), the rest
    from the suite's stream. With no logged traffic, the suite alone."""
    if not 0.0 <= logged_share <= 1.0:
        raise EvolutionError(f"logged_share must be in [0, 1], got {logged_share}")
    g = torch.Generator().manual_seed(seed)

    def logged_cycle() -> Iterator[Pair]:
        while True:
            for i in torch.randperm(len(logged), generator=g).tolist():
                yield logged[i]

    from_log = logged_cycle() if logged and logged_share > 0 else None
    while True:
        if from_log is not None and torch.rand((), generator=g).item() < logged_share:
            yield next(from_log)
        else:
            yield next(suite)


def row_alphas(pairs: Sequence[Pair], cfg: DistillConfig) -> Tensor:
    """Each pair's weight of the teacher: ``cfg.alpha``, or 0 for a ``LabelOnly`` pair."""
    return torch.tensor([0.0 if isinstance(p, LabelOnly) else cfg.alpha for p in pairs])


def _loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    seq2seq: bool,
    cfg: DistillConfig,
    alphas: Tensor | None = None,
) -> Tensor:
    """The mean over answer tokens of ``alpha * T^2 * KL + (1 - alpha) * CE``, alpha per row (``alphas``; all
    ``cfg.alpha`` when None)."""
    if not seq2seq:  # logits at position i predict token i+1
        student_logits, teacher_logits, labels = student_logits[:, :-1], teacher_logits[:, :-1], labels[:, 1:]
    keep = labels != -100
    s, t = student_logits[keep], teacher_logits[keep]
    rows = torch.full((labels.shape[0],), cfg.alpha) if alphas is None else alphas
    alpha = rows.to(s.device, s.dtype)[:, None].expand_as(labels)[keep]
    temp = cfg.temperature
    kd = nnf.kl_div(nnf.log_softmax(s / temp, -1), nnf.log_softmax(t / temp, -1), log_target=True, reduction="none")
    ce = nnf.cross_entropy(s, labels[keep], reduction="none")
    return (alpha * temp * temp * kd.sum(-1) + (1 - alpha) * ce).mean()


def distill(
    student: PreTrainedModel,
    teacher: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Iterator[Pair],
    cfg: DistillConfig,
    progress: Callable[[str], None] | None = None,
) -> DistillReport:
    """Train ``student`` (in place) towards ``teacher`` on ``pairs``; the teacher is never changed."""
    seq2seq = bool(getattr(student.config, "is_encoder_decoder", False))
    if seq2seq != bool(getattr(teacher.config, "is_encoder_decoder", False)):
        raise EvolutionError("the student and the teacher must both be seq2seq or both causal")
    if student.config.vocab_size != teacher.config.vocab_size:
        raise EvolutionError(
            f"the student's vocabulary ({student.config.vocab_size}) differs from the teacher's "
            f"({teacher.config.vocab_size}): distil before compressing the vocabulary"
        )
    torch.manual_seed(cfg.seed)
    device = next(student.parameters()).device
    teacher.eval()
    student.train()
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.01)

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))

    report = DistillReport(steps=cfg.steps, seconds=0.0)
    t0 = time.perf_counter()
    window: list[float] = []
    every = max(1, cfg.steps // 20)
    try:
        for step in range(cfg.steps):
            chosen = list(itertools.islice(pairs, cfg.batch_size))
            batch = teacher_forcing(tokenizer, chosen, seq2seq, device)
            with torch.no_grad():
                t_logits = teacher(**batch).logits
            s_logits = student(**batch).logits
            loss = _loss(s_logits, t_logits, batch["labels"], seq2seq, cfg, row_alphas(chosen, cfg))
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            window.append(loss.item())
            if (step + 1) % every == 0 or step + 1 == cfg.steps:
                report.losses.append(sum(window) / len(window))
                window = []
                if progress is not None:
                    el = time.perf_counter() - t0
                    progress(
                        f"distil: step {step + 1}/{cfg.steps} loss {report.losses[-1]:.4f} "
                        f"{el:.0f}s, eta {el / (step + 1) * (cfg.steps - step - 1):.0f}s"
                    )
    finally:
        student.eval()
    report.seconds = time.perf_counter() - t0
    return report
