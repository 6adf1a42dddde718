"""Distillation moves a student towards its teacher and leaves the teacher as it was; the training mix is what it
says (counted, not sampled by eye)."""

from __future__ import annotations

import copy
import itertools
from collections import Counter

import pytest
import torch

from evostream.consumers.evolution.batches import teacher_forcing
from evostream.consumers.evolution.distill import DistillConfig, _loss, distill, mixed_stream, row_alphas
from evostream.consumers.evolution.inputs import LabelOnly
from evostream.core.errors import EvolutionError
from tests.producers.models import tiny

PAIRS = [("reverse: abc", "cba"), ("sort: dcba", "abcd"), ("upper: xy", "XY"), ("add: 1+2", "3")]


def suite_stream() -> itertools.cycle[tuple[str, str]]:
    return itertools.cycle([("date: 2020-01-02", "02/01/2020"), ("lookup: a; a=1 b=2", "1")])


def kd_gap(student: torch.nn.Module, teacher: torch.nn.Module, tok: object, seq2seq: bool) -> float:
    """The pure distillation loss (alpha 1) of ``student`` against ``teacher`` on fixed pairs."""
    batch = teacher_forcing(tok, PAIRS, seq2seq, torch.device("cpu"))  # type: ignore[arg-type]
    with torch.no_grad():
        return float(
            _loss(
                student(**batch).logits,
                teacher(**batch).logits,
                batch["labels"],
                seq2seq,
                DistillConfig(alpha=1.0, temperature=1.0),
            )
        )


@pytest.mark.parametrize("family", ["t5", "gpt2", "llama"])
def test_the_student_moves_towards_the_teacher_which_stays_unchanged(family: str) -> None:
    teacher_lm = tiny(family, varied=True, seed=1)
    teacher, tok = teacher_lm.model, teacher_lm.tokenizer
    student = copy.deepcopy(teacher)
    torch.manual_seed(5)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p) * 0.3 * p.std().clamp(min=1e-3))
    before_teacher = {k: v.clone() for k, v in teacher.state_dict().items()}
    seq2seq = family == "t5"
    gap0 = kd_gap(student, teacher, tok, seq2seq)
    report = distill(
        student,
        teacher,
        tok,
        itertools.cycle(PAIRS),
        DistillConfig(steps=40, batch_size=4, lr=3e-3, warmup=5, alpha=1.0),
    )
    gap1 = kd_gap(student, teacher, tok, seq2seq)
    assert gap1 < 0.5 * gap0, (gap0, gap1)
    assert report.steps == 40 and len(report.losses) == 20 and report.losses[-1] < report.losses[0]
    assert all(torch.equal(before_teacher[k], v) for k, v in teacher.state_dict().items())
    assert not student.training


def test_causal_batches_put_the_loss_on_the_answer_only() -> None:
    lm = tiny("gpt2")
    batch = teacher_forcing(lm.tokenizer, [("add: 1+2", "3")], False, torch.device("cpu"))
    prompt_len = len(lm.tokenizer("add: 1+2", add_special_tokens=False).input_ids)
    labels = batch["labels"][0].tolist()
    assert labels[:prompt_len] == [-100] * prompt_len
    answer = [*lm.tokenizer(" 3", add_special_tokens=False).input_ids, lm.tokenizer.eos_token_id]
    assert labels[prompt_len:] == answer
    assert batch["input_ids"][0].tolist()[prompt_len:] == answer


def test_the_mix_draws_its_share_from_the_log() -> None:
    logged = [(f"logged {i}", "x") for i in range(7)]
    drawn = Counter(
        "log" if p.startswith("logged") else "suite"
        for p, _ in itertools.islice(mixed_stream(logged, suite_stream(), 0.3, seed=1), 2000)
    )
    assert 0.26 < drawn["log"] / 2000 < 0.34, drawn
    # each pass over the log is a shuffled full pass: every logged pair comes back equally often
    only_log = Counter(itertools.islice(mixed_stream(logged, suite_stream(), 1.0), 70))
    assert set(only_log.values()) == {10}
    assert all(p.startswith(("date", "lookup")) for p, _ in itertools.islice(mixed_stream([], suite_stream()), 50))
    with pytest.raises(EvolutionError, match="logged_share"):
        next(mixed_stream(logged, suite_stream(), 1.5))


def test_a_student_with_another_vocabulary_is_refused() -> None:
    t5 = tiny("t5").model
    other = copy.deepcopy(t5)
    other.resize_token_embeddings(300)
    with pytest.raises(EvolutionError, match="vocabulary"):
        distill(other, t5, tiny("t5").tokenizer, itertools.cycle(PAIRS), DistillConfig(steps=1))
    with pytest.raises(EvolutionError, match="seq2seq"):
        distill(tiny("gpt2").model, t5, tiny("t5").tokenizer, itertools.cycle(PAIRS), DistillConfig(steps=1))


def test_a_reference_answer_is_learnt_from_its_label_alone_and_the_rest_as_before() -> None:
    lm = tiny("gpt2")
    mixed = [PAIRS[0], LabelOnly(*PAIRS[1]), PAIRS[2], LabelOnly(*PAIRS[3])]
    batch = teacher_forcing(lm.tokenizer, mixed, False, torch.device("cpu"))
    cfg = DistillConfig(alpha=0.5, temperature=2.0)
    assert row_alphas(mixed, cfg).tolist() == [0.5, 0.0, 0.5, 0.0]
    with torch.no_grad():
        s = lm.model(**batch).logits
    g = torch.Generator().manual_seed(3)
    t1, t2 = (torch.randn(s.shape, generator=g) for _ in range(2))
    labels = batch["labels"]
    # every row a reference answer: the loss is the cross-entropy, whatever the teacher says
    only = torch.zeros(len(mixed))
    keep = labels[:, 1:] != -100
    ce = torch.nn.functional.cross_entropy(s[:, :-1][keep], labels[:, 1:][keep])
    assert float(_loss(s, t1, labels, False, cfg, only)) == pytest.approx(float(ce), rel=1e-5)
    assert float(_loss(s, t2, labels, False, cfg, only)) == pytest.approx(float(ce), rel=1e-5)
    # mixed: the teacher moves the loss through the parent's rows only
    parent_rows = torch.tensor([True, False, True, False])
    t3 = torch.where(parent_rows[:, None, None], t1, t2)
    assert float(_loss(s, t1, labels, False, cfg, row_alphas(mixed, cfg))) == pytest.approx(
        float(_loss(s, t3, labels, False, cfg, row_alphas(mixed, cfg))), rel=1e-6
    )
    # a uniform alpha is the loss it always was: alpha T^2 KL(batchmean over tokens) + (1 - alpha) CE
    kd = torch.nn.functional.kl_div(
        torch.log_softmax(s[:, :-1][keep] / 2.0, -1),
        torch.log_softmax(t1[:, :-1][keep] / 2.0, -1),
        log_target=True,
        reduction="batchmean",
    )
    assert float(_loss(s, t1, labels, False, cfg)) == pytest.approx(float(0.5 * 4.0 * kd + 0.5 * ce), rel=1e-5)
