"""Instrumented generation on T5, GPT-2 and Llama built from config: same tokens as plain generate, statistics equal
to independent recomputation from a full forward pass, NaN detection on a poisoned weight."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from producers.generate import GenerationError, GenParams, InstrumentedGenerator, StepBatch
from producers.loading import LoadedModel
from tests.producers.models import FAMILIES, tiny

PROMPTS = ["reverse: hello", "sort: abcdefghij"]


def plain_generate(lm: LoadedModel, prompt: str, n: int) -> list[int]:
    enc = lm.tokenizer([prompt], return_tensors="pt")
    out = lm.model.generate(**enc, max_new_tokens=n, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id)
    start = 1 if lm.is_seq2seq else enc.input_ids.shape[1]
    return [int(t) for t in out[0, start:]]


def run(lm: LoadedModel, prompts: list[str], n: int = 6, **kw: object) -> tuple[list[StepBatch], list[list[int]]]:
    gen = InstrumentedGenerator(lm, **kw)  # type: ignore[arg-type]
    steps: list[StepBatch] = []
    try:
        res = gen.generate(prompts, GenParams(max_new_tokens=n), steps.append)
    finally:
        gen.close()
    return steps, [r.token_ids for r in res]


def full_forward(lm: LoadedModel, prompt: str, tokens: list[int], attentions: bool = False) -> object:
    enc = lm.tokenizer([prompt], return_tensors="pt")
    with torch.no_grad():
        if lm.is_seq2seq:
            dec = torch.tensor([[lm.model.config.decoder_start_token_id, *tokens[:-1]]])
            return lm.model(**enc, decoder_input_ids=dec, output_attentions=attentions, output_hidden_states=True)
        ids = torch.cat([enc.input_ids, torch.tensor([tokens[:-1]], dtype=torch.long)], dim=1)
        return lm.model(input_ids=ids, output_attentions=attentions, output_hidden_states=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_tokens_equal_plain_generate_in_a_batch(family: str) -> None:
    lm = tiny(family)
    _, tokens = run(lm, PROMPTS)
    for prompt, got in zip(PROMPTS, tokens, strict=True):
        assert got == plain_generate(lm, prompt, 6)[: len(got)]


@pytest.mark.parametrize("family", FAMILIES)
def test_step_statistics_match_a_full_forward(family: str) -> None:
    lm = tiny(family)
    steps, tokens = run(lm, PROMPTS[:1])
    n = len(tokens[0])
    out = full_forward(lm, PROMPTS[0], tokens[0])
    logits = out.logits[0, -n:].double()  # type: ignore[attr-defined]
    p = torch.softmax(logits, -1).numpy()
    ref_entropy = -(p * np.log2(p)).sum(-1)
    got_entropy = np.array([s.logits[0, 1] for s in steps])
    np.testing.assert_allclose(got_entropy, ref_entropy, rtol=1e-4)
    ref_logprob = np.log(p[np.arange(n), tokens[0]])
    np.testing.assert_allclose([s.logits[0, 0] for s in steps], ref_logprob, rtol=1e-4, atol=1e-5)
    # per-layer hidden L2 of the newest position; HF's last hidden state is after the final norm, so compare
    # the layers before it
    hs = out.decoder_hidden_states if lm.is_seq2seq else out.hidden_states  # type: ignore[attr-defined]
    for layer in range(len(hs) - 2):
        ref = hs[layer + 1][0, -n:].norm(dim=-1).numpy()
        np.testing.assert_allclose([s.hidden[0, 0, layer] for s in steps], ref, rtol=1e-4)
    assert all(s.ffn is not None and s.ffn.shape == (1, 2) for s in steps)
    assert all(s.heads is not None and s.heads.shape == (1, 2, 4) for s in steps)


@pytest.mark.parametrize("family", FAMILIES)
def test_exact_attention_entropy_with_eager_attention(family: str) -> None:
    lm = tiny(family, attn="eager")
    steps, tokens = run(lm, PROMPTS[:1], signal="ENTROPY")
    n = len(tokens[0])
    out = full_forward(lm, PROMPTS[0], tokens[0], attentions=True)
    attn = out.decoder_attentions if lm.is_seq2seq else out.attentions  # type: ignore[attr-defined]
    for layer, a in enumerate(attn):
        rows = a[0, :, -n:, :].double()  # [H, n, T]: each generated position's query row
        ref = -(rows * torch.log2(torch.where(rows > 0, rows, torch.ones_like(rows)))).sum(-1).T.numpy()  # [n, H]
        np.testing.assert_allclose(np.stack([s.heads[0, layer] for s in steps]), ref, rtol=1e-4, atol=1e-5)  # type: ignore[index]


@pytest.mark.parametrize("family", FAMILIES)
def test_poisoned_weight_is_detected_in_its_layer(family: str) -> None:
    lm = tiny(family)
    from producers.anatomy import anatomy

    ffn = anatomy(lm.model).ffn_out[1]
    assert ffn is not None
    with torch.no_grad():
        ffn.weight[0, 0] = float("nan")  # type: ignore[index]
    steps, _ = run(lm, PROMPTS[:1], n=2)
    nonfinite = steps[0].hidden[0, 2]
    assert nonfinite[0] == 0
    assert nonfinite[1] > 0


def test_bad_parameters_and_oversize_prompts_are_refused() -> None:
    gen = InstrumentedGenerator(tiny("t5"), max_prompt_tokens=8)
    with pytest.raises(GenerationError, match="max_new_tokens"):
        gen.generate(["x"], GenParams(max_new_tokens=0))
    with pytest.raises(GenerationError, match="temperature"):
        gen.generate(["x"], GenParams(do_sample=True, temperature=0.0))
    with pytest.raises(GenerationError, match="exceeds the limit of 8"):
        gen.generate(["a prompt that is too long"], GenParams())


def test_seeded_sampling_is_reproducible() -> None:
    lm = tiny("gpt2")
    gen = InstrumentedGenerator(lm)
    p = GenParams(max_new_tokens=8, do_sample=True, temperature=1.5, top_k=50, top_p=0.9, seed=42)
    a = gen.generate(["abc"], p)[0].token_ids
    b = gen.generate(["abc"], p)[0].token_ids
    assert a == b
    assert len(a) == 8 or a[-1] == 1


def test_entropy_is_in_range_for_every_step() -> None:
    steps, _ = run(tiny("llama"), PROMPTS, n=4)
    for s in steps:
        assert np.all(s.logits[:, 1] >= 0)
        assert np.all(s.logits[:, 1] <= math.log2(384) + 1e-4)
        assert s.latency_us > 0


def test_neuron_counts_agree_with_the_per_step_sparsity_of_active_rows() -> None:
    lm = tiny("t5")  # ReLU: a neuron fired exactly when its activation is not zero
    gen = InstrumentedGenerator(lm)
    steps: list[StepBatch] = []
    try:
        gen.generate(["reverse: hello", "sort: ab"], GenParams(max_new_tokens=8), steps.append)
        taken = gen.take_neuron_counts()
        assert gen.take_neuron_counts() is None  # taking resets
    finally:
        gen.close()
    assert taken is not None
    counts, rows = taken
    d_ff = counts.shape[1]
    assert rows == sum(int(s.active.sum()) for s in steps)
    expected = sum((1 - s.ffn[s.active]).sum(0) * d_ff for s in steps)  # type: ignore[index]
    assert counts.shape[0] == 2 and counts.dtype == np.int32
    np.testing.assert_allclose(counts.sum(1), expected, atol=0.5)
