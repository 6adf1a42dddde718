"""Instrumented generation on T5, GPT-2 and Llama built from config: the same whole token sequences as plain generate,
every step statistic on every layer equal to an independent recomputation from a full forward pass, NaN detection on
a poisoned weight, and a bare loop (instrumentation off) that registers no hook."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from torch import nn
from transformers import ByT5Tokenizer

from evostream.models.loading import LoadedModel
from evostream.producers.generate import Generated, GenerationError, GenParams, InstrumentedGenerator
from evostream.producers.steps import TOPK, StepBatch
from tests.producers.models import FAMILIES, tiny

PROMPTS = ["reverse: hello", "sort: abcdefghij"]  # different lengths: the batch is padded
EOS = 1
N = 12

F64 = npt.NDArray[np.float64]
PATHS = [(f, "dynamic") for f in FAMILIES] + [(f, "static") for f in FAMILIES if f != "t5"]
"""Every decode path of every family: the static KV cache is for the decoder-only ones."""


def model(family: str, attn: str = "sdpa") -> LoadedModel:
    return tiny(family, attn=attn, varied=True)


def plain_generate(lm: LoadedModel, prompt: str, n: int) -> list[int]:
    """Hugging Face's greedy generate, one prompt alone: every token it generated, up to and including EOS."""
    enc = lm.tokenizer([prompt], return_tensors="pt")
    out = lm.model.generate(**enc, max_new_tokens=n, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id)
    start = 1 if lm.is_seq2seq else enc.input_ids.shape[1]
    return [int(t) for t in out[0, start:]]


def run(lm: LoadedModel, prompts: list[str], n: int = N, **kw: Any) -> tuple[list[StepBatch], list[Generated]]:
    gen = InstrumentedGenerator(lm, **kw)
    steps: list[StepBatch] = []
    try:
        res = gen.generate(prompts, GenParams(max_new_tokens=n), steps.append)
    finally:
        gen.close()
    return steps, res


def hooked_modules(m: nn.Module) -> list[str]:
    return [name for name, sub in m.named_modules() if sub._forward_hooks or sub._forward_pre_hooks]


# --- tokens ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("family", "kv_cache"), PATHS)
def test_tokens_equal_plain_generate_in_a_batch(family: str, kv_cache: str) -> None:
    lm = model(family)
    _, res = run(lm, PROMPTS, kv_cache=kv_cache)
    for prompt, r in zip(PROMPTS, res, strict=True):
        want = plain_generate(lm, prompt, N)
        assert len(set(want)) > 3, "the model repeats itself: comparing its tokens would prove little"
        assert r.token_ids == want


@pytest.mark.parametrize(("family", "kv_cache"), PATHS)
def test_tokens_equal_plain_generate_through_eos(family: str, kv_cache: str) -> None:
    """Both stop at EOS: the output head's EOS logit is made one more than the logit of the token chosen at step 3,
    so EOS wins at step 3 at the latest."""
    lm = model(family)
    _, before = run(lm, PROMPTS[:1])
    k = before[0].token_ids[3]

    def favour_eos(_m: nn.Module, _args: Any, out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        out[..., EOS] = out[..., k] + 1.0
        return out

    hook = lm.model.get_output_embeddings().register_forward_hook(favour_eos)
    try:
        want = plain_generate(lm, PROMPTS[0], N)
        _, res = run(lm, PROMPTS, kv_cache=kv_cache)
        want_other = plain_generate(lm, PROMPTS[1], N)
    finally:
        hook.remove()
    assert want[-1] == EOS and len(want) <= 4
    assert res[0].token_ids == want
    assert res[0].finish_reason == "STOP"
    assert res[1].token_ids == want_other


@pytest.mark.parametrize(("family", "kv_cache"), PATHS)
def test_a_row_stopped_by_on_step_finishes_escalated_and_the_batch_goes_on(family: str, kv_cache: str) -> None:
    """Row 0 is stopped at step 2: it keeps the three tokens generated up to then, finishes ESCALATED and reports no
    step after; row 1 generates exactly what it generates alone."""
    lm = model(family)
    gen = InstrumentedGenerator(lm, kv_cache=kv_cache)  # type: ignore[arg-type]
    steps: list[StepBatch] = []

    def on_step(sb: StepBatch) -> list[int]:
        steps.append(sb)
        return [0] if sb.step == 2 else []

    try:
        res = gen.generate(PROMPTS, GenParams(max_new_tokens=N), on_step)
        alone = gen.generate(PROMPTS[1:], GenParams(max_new_tokens=N))
    finally:
        gen.close()
    assert res[0].finish_reason == "ESCALATED"
    assert res[0].token_ids == plain_generate(lm, PROMPTS[0], N)[:3]
    assert [bool(sb.active[0]) for sb in steps] == [True, True, True] + [False] * (len(steps) - 3)
    assert len(steps) > 3, "the batch went on for the other row"
    assert res[1].token_ids == alone[0].token_ids
    assert res[1].finish_reason == alone[0].finish_reason != "ESCALATED"


def test_stopping_a_row_outside_the_batch_is_refused() -> None:
    gen = InstrumentedGenerator(model("gpt2"))
    try:
        with pytest.raises(GenerationError, match="row 5 of a batch of 2"):
            gen.generate(PROMPTS, GenParams(max_new_tokens=3), lambda sb: [5])
    finally:
        gen.close()


@pytest.mark.parametrize("family", FAMILIES)
def test_the_bare_loop_registers_no_hook_and_chooses_the_same_tokens(family: str) -> None:
    lm = model(family)
    bare = InstrumentedGenerator(lm, instrument=False)
    assert hooked_modules(lm.model) == []
    got = [r.token_ids for r in bare.generate(PROMPTS, GenParams(max_new_tokens=N))]
    assert hooked_modules(lm.model) == []
    assert bare.take_neuron_counts() is None
    with pytest.raises(GenerationError, match="instrument=False"):
        bare.generate(PROMPTS, GenParams(max_new_tokens=2), lambda _sb: None)
    instrumented = InstrumentedGenerator(lm)
    assert hooked_modules(lm.model), "the check above could not fail: the instrumented generator hooks the model"
    try:
        want = [r.token_ids for r in instrumented.generate(PROMPTS, GenParams(max_new_tokens=N))]
    finally:
        instrumented.close()
    assert hooked_modules(lm.model) == []
    assert got == want
    assert got == [plain_generate(lm, p, N) for p in PROMPTS]


# --- statistics against an independent full forward -----------------------------------------------------------------

# The generating layers and their projections, written out per family: independent of models.anatomy.
LAYERS: dict[str, Callable[[Any], Any]] = {
    "t5": lambda m: m.decoder.block,
    "gpt2": lambda m: m.transformer.h,
    "llama": lambda m: m.model.layers,
}
ATTN_OUT: dict[str, Callable[[Any], Any]] = {
    "t5": lambda layer: layer.layer[0].SelfAttention.o,
    "gpt2": lambda layer: layer.attn.c_proj,
    "llama": lambda layer: layer.self_attn.o_proj,
}
FFN_OUT: dict[str, Callable[[Any], Any]] = {
    "t5": lambda layer: layer.layer[2].DenseReluDense.wo,
    "gpt2": lambda layer: layer.mlp.c_proj,
    "llama": lambda layer: layer.mlp.down_proj,
}


def full_forward(lm: LoadedModel, prompt: str, tokens: list[int], attentions: bool = False) -> Any:
    """One forward pass, without cache, over the prompt and the generated tokens (teacher forcing)."""
    enc = lm.tokenizer([prompt], return_tensors="pt")
    with torch.no_grad():
        if lm.is_seq2seq:
            dec = torch.tensor([[lm.model.config.decoder_start_token_id, *tokens[:-1]]])
            return lm.model(**enc, decoder_input_ids=dec, output_attentions=attentions, output_hidden_states=True)
        ids = torch.cat([enc.input_ids, torch.tensor([tokens[:-1]], dtype=torch.long)], dim=1)
        return lm.model(input_ids=ids, output_attentions=attentions, output_hidden_states=True)


@dataclass
class Reference:
    """A full forward's tensors at the positions that chose the generated tokens, in float64, one row per step."""

    logits: F64  # [n, V]
    hidden: list[F64]  # per layer [n, D]: the layer's output, before any final norm
    head_outputs: list[F64]  # per layer [n, H*Dh]: input of the attention output projection
    ffn_activations: list[F64]  # per layer [n, F]: input of the FFN output projection


def reference(lm: LoadedModel, family: str, prompt: str, tokens: list[int]) -> Reference:
    captured: dict[tuple[str, int], torch.Tensor] = {}
    handles = []

    def keep_output(key: tuple[str, int]) -> Callable[..., None]:
        def hook(_m: nn.Module, _args: Any, out: Any) -> None:
            captured[key] = out[0] if isinstance(out, tuple) else out

        return hook

    def keep_input(key: tuple[str, int]) -> Callable[..., None]:
        def hook(_m: nn.Module, args: Any) -> None:
            captured[key] = args[0]

        return hook

    layers = list(LAYERS[family](lm.model))
    for i, layer in enumerate(layers):
        handles += [
            layer.register_forward_hook(keep_output(("hidden", i))),
            ATTN_OUT[family](layer).register_forward_pre_hook(keep_input(("heads", i))),
            FFN_OUT[family](layer).register_forward_pre_hook(keep_input(("ffn", i))),
        ]
    try:
        out = full_forward(lm, prompt, tokens)
    finally:
        for h in handles:
            h.remove()
    n = len(tokens)

    def rows(t: torch.Tensor) -> F64:
        return t[0, -n:].double().numpy()

    hs = out.decoder_hidden_states if lm.is_seq2seq else out.hidden_states
    for i in range(len(layers) - 1):  # the hooks see what HF reports as each layer's output (bar the last, normed)
        np.testing.assert_array_equal(rows(captured["hidden", i]), rows(hs[i + 1]))
    return Reference(
        logits=rows(out.logits),
        hidden=[rows(captured["hidden", i]) for i in range(len(layers))],
        head_outputs=[rows(captured["heads", i]) for i in range(len(layers))],
        ffn_activations=[rows(captured["ffn", i]) for i in range(len(layers))],
    )


def logit_reference(logits: F64, token: int) -> list[float]:
    """logprob (nats), entropy (bits), top1-top2 margin, top-k mass, surprisal (bits) of one step's raw logits."""
    z = logits - logits.max()
    p = np.exp(z) / np.exp(z).sum()
    desc = np.sort(p)[::-1]
    logprob = math.log(p[token])
    entropy = float(-(p * np.log2(np.where(p > 0, p, 1.0))).sum())  # 0 log 0 = 0; NaN stays NaN
    return [logprob, entropy, float(desc[0] - desc[1]), float(desc[:TOPK].sum()), -logprob / math.log(2)]


def hidden_reference(h: F64) -> list[float]:
    """L2 norm and max |x| over the finite entries, and the count of NaN/Inf entries."""
    finite = h[np.isfinite(h)]
    return [float(np.sqrt((finite**2).sum())), float(np.abs(finite).max()), float((~np.isfinite(h)).sum())]


@pytest.mark.parametrize("poisoned", [False, True], ids=["clean", "nan-weight"])
@pytest.mark.parametrize(("family", "kv_cache"), PATHS)
def test_every_step_statistic_on_every_layer_matches_a_full_forward(family: str, kv_cache: str, poisoned: bool) -> None:
    """Logit statistics, hidden L2 / max-abs / NaN-Inf count, per-head output norms and FFN sparsity, for every
    step of both rows of a padded batch and every layer including the last. Poisoned: a NaN weight in the last
    layer's FFN, so the NaN counts are not all zero (and the last layer's are taken before the final norm)."""
    lm = model(family)
    if poisoned:
        with torch.no_grad():
            FFN_OUT[family](LAYERS[family](lm.model)[-1]).weight[0, 0] = float("nan")
    steps, res = run(lm, PROMPTS, signal="OUTPUT_NORM", kv_cache=kv_cache)
    n_layers, n_heads = 2, 4
    for r, (prompt, out) in enumerate(zip(PROMPTS, res, strict=True)):
        ref = reference(lm, family, prompt, out.token_ids)
        mine = [s for s in steps if s.active[r]]
        assert len(mine) == len(out.token_ids) == N
        got_logits = np.stack([s.logits[r] for s in mine])
        want_logits = np.array([logit_reference(ref.logits[t], tok) for t, tok in enumerate(out.token_ids)])
        np.testing.assert_allclose(got_logits, want_logits, rtol=1e-4, atol=1e-6)
        for layer in range(n_layers):
            got_hidden = np.stack([s.hidden[r, :, layer] for s in mine])  # [n, 3]
            want_hidden = np.array([hidden_reference(h) for h in ref.hidden[layer]])
            np.testing.assert_allclose(got_hidden, want_hidden, rtol=1e-4)
            heads = ref.head_outputs[layer].reshape(N, n_heads, -1)
            np.testing.assert_allclose([s.heads[r, layer] for s in mine], np.linalg.norm(heads, axis=-1), rtol=1e-4)  # type: ignore[index]
            zero_share = (np.abs(ref.ffn_activations[layer]) <= 1e-6).mean(-1)
            np.testing.assert_allclose([s.ffn[r, layer] for s in mine], zero_share, rtol=0, atol=1e-7)  # type: ignore[index]
    nonfinite = np.stack([s.hidden[:, 2] for s in steps])  # [steps, B, L]
    if poisoned:
        assert np.all(nonfinite[..., 0] == 0) and np.all(nonfinite[..., -1] == 1)
        assert np.all(np.isnan(np.stack([s.logits for s in steps])))
    else:
        assert np.all(nonfinite == 0)
    if family == "t5":  # ReLU: the sparsity compared above is not trivially zero
        assert 0.2 < np.mean([s.ffn for s in steps]) < 0.8


@pytest.mark.parametrize("family", FAMILIES)
def test_exact_attention_entropy_with_eager_attention(family: str) -> None:
    lm = model(family, attn="eager")
    steps, res = run(lm, PROMPTS, signal="ENTROPY")
    for r, (prompt, out) in enumerate(zip(PROMPTS, res, strict=True)):
        n = len(out.token_ids)
        full = full_forward(lm, prompt, out.token_ids, attentions=True)
        attn = full.decoder_attentions if lm.is_seq2seq else full.attentions
        assert len(attn) == 2
        mine = [s for s in steps if s.active[r]]
        for layer, a in enumerate(attn):
            rows = a[0, :, -n:, :].double()  # [H, n, T]: each generated position's query row
            ref = -(rows * torch.log2(torch.where(rows > 0, rows, torch.ones_like(rows)))).sum(-1).T.numpy()  # [n, H]
            np.testing.assert_allclose(np.stack([s.heads[r, layer] for s in mine]), ref, rtol=1e-4, atol=1e-5)  # type: ignore[index]


@pytest.mark.parametrize("family", FAMILIES)
def test_poisoned_weight_is_detected_in_its_layer(family: str) -> None:
    lm = model(family)
    with torch.no_grad():
        FFN_OUT[family](LAYERS[family](lm.model)[1]).weight[0, 0] = float("nan")
    steps, _ = run(lm, PROMPTS[:1], n=2)
    nonfinite = steps[0].hidden[0, 2]
    assert nonfinite[0] == 0
    assert nonfinite[1] > 0


# --- parameters and bookkeeping -------------------------------------------------------------------------------------


def test_bad_parameters_and_oversize_prompts_are_refused() -> None:
    gen = InstrumentedGenerator(tiny("t5"), max_prompt_tokens=8)
    with pytest.raises(GenerationError, match="max_new_tokens"):
        gen.generate(["x"], GenParams(max_new_tokens=0))
    with pytest.raises(GenerationError, match="temperature"):
        gen.generate(["x"], GenParams(do_sample=True, temperature=0.0))
    with pytest.raises(GenerationError, match="exceeds the limit of 8"):
        gen.generate(["a prompt that is too long"], GenParams())


def test_a_prompt_that_encodes_to_no_tokens_is_refused() -> None:
    """A causal model given no token at all would condition on padding alone (ByT5 always appends EOS, so its
    tokenizer is told not to here)."""

    class NoSpecialTokens(ByT5Tokenizer):  # type: ignore[misc]
        def build_inputs_with_special_tokens(self, ids: list[int], pair: list[int] | None = None) -> list[int]:
            return ids + (pair or [])

    lm = model("gpt2")
    lm.tokenizer = NoSpecialTokens()
    gen = InstrumentedGenerator(lm)
    assert len(gen.generate(["ab"], GenParams(max_new_tokens=2))[0].token_ids) == 2
    with pytest.raises(GenerationError, match="a prompt encodes to no tokens"):
        gen.generate(["ab", ""], GenParams(max_new_tokens=2))


def test_seeded_sampling_is_reproducible() -> None:
    lm = model("gpt2")
    gen = InstrumentedGenerator(lm)
    p = GenParams(max_new_tokens=8, do_sample=True, temperature=1.5, top_k=50, top_p=0.9, seed=42)
    a = gen.generate(["abc"], p)[0].token_ids
    b = gen.generate(["abc"], p)[0].token_ids
    assert a == b
    assert len(a) == 8 or a[-1] == EOS


def test_entropy_is_in_range_for_every_step() -> None:
    steps, _ = run(model("llama"), PROMPTS, n=4)
    for s in steps:
        assert np.all(s.logits[:, 1] >= 0)
        assert np.all(s.logits[:, 1] <= math.log2(384) + 1e-4)
        assert s.latency_us > 0


def test_neuron_counts_agree_with_the_per_step_sparsity_of_active_rows() -> None:
    lm = model("t5")  # ReLU: a neuron fired exactly when its activation is not zero
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


def test_the_static_cache_path_says_which_path_runs() -> None:
    causal = InstrumentedGenerator(model("gpt2"), kv_cache="static")
    assert (causal.decode_path, causal.decode_path_reason) == ("static", "as asked")
    seq2seq = InstrumentedGenerator(model("t5"), kv_cache="static")
    assert seq2seq.decode_path == "dynamic"
    assert "decoder-only" in seq2seq.decode_path_reason
    with pytest.raises(GenerationError, match="kv_cache must be 'dynamic' or 'static', got 'paged'"):
        InstrumentedGenerator(model("gpt2"), kv_cache="paged")  # type: ignore[arg-type]


@pytest.mark.parametrize("family", FAMILIES)
def test_the_stacked_reductions_equal_the_layer_by_layer_ones(family: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Head norms, FFN sparsity and neuron counts are reduced over all layers at once when the layers are alike;
    layer by layer (the path for layers of different widths) they are the same numbers."""
    from evostream.producers import probe as probe_module

    def collect() -> tuple[list[StepBatch], list[npt.NDArray[np.int32]], tuple[npt.NDArray[np.int32], int] | None]:
        gen = InstrumentedGenerator(model(family), signal="OUTPUT_NORM")
        steps: list[StepBatch] = []
        try:
            gen.generate(PROMPTS, GenParams(max_new_tokens=N), steps.append)
            probe = gen.probe
            assert probe is not None
            kept = probe.stacked_counts.unbind(0) if probe.stacked_counts is not None else probe.neuron_counts
            per_layer = [c.numpy() for c in kept if c is not None]
            return steps, per_layer, gen.take_neuron_counts()
        finally:
            gen.close()

    stacked, stacked_counts, stacked_taken = collect()
    monkeypatch.setattr(probe_module, "_same_shape", lambda _tensors: False)
    layered, layered_counts, layered_taken = collect()
    assert len(stacked) == len(layered) == N
    for a, b in zip(stacked, layered, strict=True):
        np.testing.assert_allclose(a.heads, b.heads, rtol=1e-6)  # type: ignore[arg-type]
        np.testing.assert_array_equal(a.ffn, b.ffn)  # type: ignore[arg-type]
    assert len(stacked_counts) == len(layered_counts) == 2
    for a_counts, b_counts in zip(stacked_counts, layered_counts, strict=True):
        np.testing.assert_array_equal(a_counts, b_counts)
    assert stacked_counts[0].sum() > 0, "no neuron fired: the counts compared nothing"
    assert stacked_taken is not None and stacked_taken[1] == 2 * N
    assert layered_taken is None  # layer by layer the widths may differ: no [L, d_ff] record is reported
