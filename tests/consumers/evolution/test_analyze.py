"""The structural analyzer measures what it says: gate gradients are the loss's derivatives, its rankings predict
what silencing costs on held-out examples, a dead head / an identity layer / a dormant neuron is found, counts are
counts, and every head and neuron of every family gets a score and a place in the plan."""

from __future__ import annotations

import copy
from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn

from evostream.consumers.evolution.importance import (
    Measurement,
    embedding_usage,
    gated_loss,
    generating_ffn_sites,
    head_importance,
    layer_redundancy,
    measure,
    neurons_from_counts,
)
from evostream.consumers.evolution.plan import analyze
from evostream.consumers.evolution.sites import attention_sites, ffn_sites, layer_stacks
from evostream.core.errors import EvolutionError
from evostream.models.loading import LoadedModel, load_model
from evostream.models.suite.evaluate import eval_set
from evostream.models.suite.tasks import make_split
from evostream.producers.generate import GenParams, InstrumentedGenerator
from tests.producers.models import FAMILIES, tiny

Pairs = list[tuple[str, str]]
ANALYSIS: Pairs = [(e.prompt, e.answer) for e in make_split("analysis", 6)]
HELD_OUT: Pairs = [(e.prompt, e.answer) for e in eval_set(per_task=4)]
SHORT: Pairs = [("reverse: abc", "cba"), ("add: 12+30", "42"), ("upper: xyz", "XYZ"), ("sort: dcba", "abcd")]


@pytest.fixture(scope="module")
def default() -> LoadedModel:
    return load_model("default", device="cpu")


@pytest.fixture(scope="module")
def measured(default: LoadedModel) -> Measurement:
    return measure(default.model, default.tokenizer, ANALYSIS)


def silence(sizes: dict[str, int], units: list[tuple[str, int]]) -> dict[str, np.ndarray]:
    gates = {name: np.ones(n) for name, n in sizes.items()}
    for name, i in units:
        gates[name][i] = 0.0
    return gates


def _central_difference(lm: LoadedModel, pairs: Pairs, sizes: dict[str, int], name: str, h: int, eps: float) -> float:
    up, down = silence(sizes, []), silence(sizes, [])
    up[name][h], down[name][h] = 1 + eps, 1 - eps
    return (gated_loss(lm.model, lm.tokenizer, pairs, up) - gated_loss(lm.model, lm.tokenizer, pairs, down)) / (2 * eps)


def test_gate_gradients_are_the_derivatives_of_the_loss(default: LoadedModel) -> None:
    """Central finite differences of the loss in a head's gate, in float64, against the measured mean gradient.

    On the default model, for the two heads with the largest mean gradient (it is trained to a loss near 2e-4, so
    most are near 0), and to 1%: T5's layer norm computes its variance in float32 whatever the model's dtype, which
    limits a finite difference there. On a tiny GPT-2 (float64 throughout), for two heads of each layer, to 1e-6."""
    lm = LoadedModel(copy.deepcopy(default.model).double(), default.tokenizer, "default-f64", "", True, "sdpa")
    pairs = ANALYSIS[::6]  # one example per task
    heads = head_importance(lm.model, lm.tokenizer, pairs)
    sizes = {name: len(s.raw) for name, s in heads.items()}
    flat = sorted((abs(float(s.grad_mean[h])), name, h) for name, s in heads.items() for h in range(len(s.raw)))
    for grad, name, h in flat[-2:]:
        assert grad > 1e-5, "the check needs a head whose gradient is not zero"
        fd = _central_difference(lm, pairs, sizes, name, h, eps=1e-2)
        torch.testing.assert_close(fd, float(heads[name].grad_mean[h]), rtol=1e-2, atol=0.0)
    for s in heads.values():  # E|g| >= |E g|, and the paper's per-layer normalisation gives unit L2 norm
        assert np.all(s.raw >= np.abs(s.grad_mean) - 1e-15)
        torch.testing.assert_close(float(np.linalg.norm(s.normalized)), 1.0)
        assert s.examples == len(pairs)

    small = tiny("gpt2", varied=True, seed=2)
    small.model.double()
    heads = head_importance(small.model, small.tokenizer, SHORT)
    sizes = {name: len(s.raw) for name, s in heads.items()}
    for name, s in heads.items():
        for h in (0, 3):
            fd = _central_difference(small, SHORT, sizes, name, h, eps=1e-4)
            torch.testing.assert_close(fd, float(s.grad_mean[h]), rtol=1e-6, atol=1e-9)


def test_silencing_the_least_important_heads_costs_less_than_the_most_important(
    default: LoadedModel, measured: Measurement
) -> None:
    """Ranked on one split, silenced on the held-out suite: the 4 lowest heads of 36 cost far less than the top 4."""
    flat = sorted((float(s.normalized[h]), name, h) for name, s in measured.heads.items() for h in range(len(s.raw)))
    assert len(flat) == 36  # 3 encoder self + 3 decoder self + 3 cross, 4 heads each
    sizes = {name: len(s.raw) for name, s in measured.heads.items()}
    base = gated_loss(default.model, default.tokenizer, HELD_OUT)
    least = gated_loss(default.model, default.tokenizer, HELD_OUT, silence(sizes, [(n, h) for _, n, h in flat[:4]]))
    most = gated_loss(default.model, default.tokenizer, HELD_OUT, silence(sizes, [(n, h) for _, n, h in flat[-4:]]))
    assert base < least < most
    assert most - base > 3 * (least - base)


def test_silencing_the_lowest_taylor_neurons_costs_less_than_random_ones(
    default: LoadedModel, measured: Measurement
) -> None:
    """Half of every FFN's neurons, chosen by Taylor score, against three random halves of the same size."""
    sizes = {name: len(s.firing_rate) for name, s in measured.neurons.items()}
    assert sizes == {f.name: 512 for f in ffn_sites(default.model)}
    lowest = [(n, int(i)) for n, s in measured.neurons.items() for i in np.argsort(s.taylor)[: sizes[n] // 2]]
    rng = np.random.default_rng(0)
    by_taylor = gated_loss(default.model, default.tokenizer, HELD_OUT, silence(sizes, lowest))
    for _ in range(3):
        rand = [(n, int(i)) for n in sizes for i in rng.choice(sizes[n], sizes[n] // 2, replace=False)]
        assert by_taylor < gated_loss(default.model, default.tokenizer, HELD_OUT, silence(sizes, rand))


def test_dormant_neurons_are_found_and_cost_nothing(default: LoadedModel, measured: Measurement) -> None:
    """The trained model has no dormant neuron; 20 made dormant (their input weights zeroed: ReLU(0) never fires)
    are exactly the ones found, silencing them leaves the loss as it was, and the plan offers them first."""
    assert all(s.dormant().size == 0 for s in measured.neurons.values())
    model = copy.deepcopy(default.model)
    site = next(f for f in ffn_sites(model) if f.stack == "decoder" and f.layer == 1)
    dead = np.sort(np.random.default_rng(3).choice(site.width, 20, replace=False))
    with torch.no_grad():
        site.module.wi.weight[dead] = 0.0
    analysis = analyze(model, default.tokenizer, ANALYSIS)
    stats = analysis.neurons[site.name]
    np.testing.assert_array_equal(stats.dormant(), dead)
    assert all(s.dormant().size == 0 for name, s in analysis.neurons.items() if name != site.name)
    np.testing.assert_array_equal(stats.taylor[dead], 0.0)
    gates = {site.name: np.ones(site.width)}
    gates[site.name][dead] = 0.0
    torch.testing.assert_close(
        gated_loss(model, default.tokenizer, ANALYSIS[:12], gates),
        gated_loss(model, default.tokenizer, ANALYSIS[:12]),
        rtol=1e-6,
        atol=0.0,
    )
    first = analysis.plan(kinds=["neurons"], neuron_block=20)[0]
    assert first.site == site.name and sorted(first.units) == dead.tolist()
    assert "20 never" in first.explanation


def _kill_head(model: nn.Module, family: str, layer: int, head: int) -> str:
    """Zero head ``head``'s query and output weights in the self-attention of decoder layer ``layer``."""
    site = next(a for a in attention_sites(model) if a.stack == "decoder" and a.layer == layer and a.kind == "self")
    cols = slice(head * site.head_dim, (head + 1) * site.head_dim)
    with torch.no_grad():
        if family == "t5":
            site.module.q.weight[cols] = 0.0
            site.out_proj.weight[:, cols] = 0.0
        elif family == "gpt2":  # Conv1D stores [in, out]: q is the first third of c_attn's outputs
            site.module.c_attn.weight[:, cols] = 0.0
            site.out_proj.weight[cols] = 0.0
        else:
            site.module.q_proj.weight[cols] = 0.0
            site.out_proj.weight[:, cols] = 0.0
    return site.name


@pytest.mark.parametrize("family", FAMILIES)
def test_a_dead_head_ranks_last(family: str) -> None:
    lm = tiny(family, varied=True, seed=2)
    model = copy.deepcopy(lm.model)
    name = _kill_head(model, family, layer=1, head=2)
    heads = head_importance(model, lm.tokenizer, SHORT)
    assert heads[name].raw[2] == 0.0
    others = [float(s.normalized[h]) for n, s in heads.items() for h in range(len(s.raw)) if (n, h) != (name, 2)]
    assert min(others) > 0.0
    first = analyze(model, lm.tokenizer, SHORT).plan(kinds=["head"])[0]
    assert (first.site, first.units, first.score) == (name, (2,), 0.0)


def _zero(module: nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters(recurse=False):
            p.zero_()


@pytest.mark.parametrize("family", FAMILIES)
def test_a_layer_that_passes_its_input_through_has_redundancy_one(family: str) -> None:
    """Zeroing every output projection of decoder layer 0 (attention, cross-attention, FFN, biases included)
    leaves only the residual: its output equals its input."""
    lm = tiny(family, varied=True, seed=4)
    model = copy.deepcopy(lm.model)
    for site in [*attention_sites(model), *ffn_sites(model)]:
        if site.stack == "decoder" and site.layer == 0:
            _zero(site.out_proj)
    before = layer_redundancy(lm.model, lm.tokenizer, SHORT)["decoder"]
    after = layer_redundancy(model, lm.tokenizer, SHORT)
    assert before[0] < 0.9
    torch.testing.assert_close(float(after["decoder"][0]), 1.0, rtol=0.0, atol=1e-5)
    assert after["decoder"][1] < 0.99
    layer = analyze(model, lm.tokenizer, SHORT).plan(kinds=["layer"])[0]
    assert (layer.site, layer.units) == ("decoder", (0,))


def test_embedding_usage_counts_every_occurrence() -> None:
    usage = embedding_usage([[1, 2, 2], [], [2, 5]], vocab_size=8)
    assert usage.counts.tolist() == [0, 1, 3, 0, 0, 1, 0, 0]
    assert (usage.tokens, usage.used) == (5, 3)
    assert usage.unused.tolist() == [0, 3, 4, 6, 7]
    with pytest.raises(EvolutionError, match="outside the vocabulary"):
        embedding_usage([[1, 8]], vocab_size=8)


def test_neuron_counts_must_fit_the_generating_stack() -> None:
    lm = tiny("t5", varied=True)
    sites = generating_ffn_sites(lm.model)
    assert [s.name for s in sites] == [f"decoder.block.{i}.layer.2.DenseReluDense" for i in range(2)]
    with pytest.raises(EvolutionError, match="do not fit"):
        neurons_from_counts(np.zeros((3, 64), dtype=np.int32), 10, sites)
    with pytest.raises(EvolutionError, match="has 64 neurons"):
        neurons_from_counts(np.zeros((2, 32), dtype=np.int32), 10, sites)
    with pytest.raises(EvolutionError, match="lie in"):
        neurons_from_counts(np.full((2, 64), 11, dtype=np.int32), 10, sites)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_head_and_neuron_of_every_family_gets_a_score_and_a_place_in_the_plan(family: str) -> None:
    """With the producer's own neuron counts and generated token ids as the logged traffic."""
    lm = tiny(family, varied=True, seed=1)
    model = lm.model
    gen = InstrumentedGenerator(lm)
    try:
        generated = gen.generate([p for p, _ in SHORT], GenParams(max_new_tokens=6))
        taken = gen.take_neuron_counts()
    finally:
        gen.close()
    assert taken is not None
    flags = [p.requires_grad for p in model.parameters()]
    model.train()
    seen: list[str] = []
    analysis = analyze(
        model,
        lm.tokenizer,
        SHORT,
        counts=taken,
        token_ids=[g.token_ids for g in generated],
        batch_size=3,
        progress=seen.append,
    )
    assert model.training and [p.requires_grad for p in model.parameters()] == flags  # left as it was
    assert any("batch 2/2" in s for s in seen)

    attn, ffn = attention_sites(model), ffn_sites(model)
    assert {n: s.raw.shape for n, s in analysis.heads.items()} == {a.name: (a.num_heads,) for a in attn}
    assert {n: s.taylor.shape for n, s in analysis.neurons.items() if s.taylor is not None} == {
        f.name: (f.width,) for f in ffn
    }
    assert {n: r.shape for n, r in analysis.layers.items()} == {s: (len(ls),) for s, ls in layer_stacks(model).items()}
    assert set(analysis.traffic) == {s.name for s in generating_ffn_sites(model)}
    steps = taken[1]
    for row, site in zip(taken[0], generating_ffn_sites(model), strict=True):
        np.testing.assert_array_equal(analysis.traffic[site.name].firing_rate, row / steps)
    assert analysis.embeddings is not None
    assert analysis.embeddings.tokens == sum(len(g.token_ids) for g in generated)

    plan = analysis.plan(neuron_block=16)
    assert [e.rank for e in plan] == sorted(e.rank for e in plan)
    kinds = Counter(e.kind for e in plan)
    assert kinds["head"] == sum(a.num_heads for a in attn)
    assert kinds["layer"] == sum(len(ls) for ls in layer_stacks(model).values())
    for f in ffn:  # the blocks of a site partition its neurons
        units = [u for e in plan if e.kind == "neurons" and e.site == f.name for u in e.units]
        assert sorted(units) == list(range(f.width))
    rows = [e for e in plan if e.kind == "embedding_rows"]
    assert len(rows) == 1 and plan[0] is rows[0]
    assert not set(rows[0].units) & {lm.tokenizer.pad_token_id, lm.tokenizer.eos_token_id}
    unused = {i for i, c in enumerate(analysis.embeddings.counts) if c == 0}
    assert set(rows[0].units) == unused - analysis.protected_tokens
    notes = {"t5": "tied across the stack", "llama": "shares KV head", "gpt2": None}[family]
    for e in plan:
        if e.kind == "head" and notes is not None and (family == "llama" or "SelfAttention" in e.site):
            assert notes in e.explanation, e.explanation
    assert set(analysis.head_scores()) == {a.name for a in attn}
    lines = analysis.lines(max_entries=5)
    assert len(lines) == 6 and lines[0].startswith(f"structure measured on {len(SHORT)} examples")
