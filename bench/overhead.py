"""Overhead of evostream's instrumented generation against plain ``model.generate()``, side by side in one run.

Four sides decode greedily the same prompts for exactly N new tokens each (plain generate with min_new_tokens=N, ours
with stop_at_eos off; every call's token count is checked):

- plain: Hugging Face ``generate()`` on a model object that never had a hook (a second copy of the same weights,
  built before any hook exists; checked hook-free before every timed run);
- loop: our decoding loop with instrumentation off (no hook, no statistic; only the tokens), on that same copy;
- instrumented: every step statistic computed on the device and brought to the host, emitting nothing;
- emitting: as instrumented, plus one Avro GenerationStep per token through the background emitter to a real Kafka
  broker (acks=all, idempotent), delivery awaited inside the timed region.

Equal work has a price on the plain side only: min_new_tokens=N adds a logits processor to ``generate()`` that
masks the EOS logit on every step until N tokens are out, and our loop has no such step (stop_at_eos=False just
does not look for EOS). So plain pays a little work ours does not, which slightly favours our side; it is required,
because without it plain stops at the first EOS and the sides would decode different token counts. The review of
issue 8 estimated it as a small share of a step on CPU; it is not measured by this bench (the estimate and a smoke
attempt to measure it: docs/benchmarks.md#overhead-of-instrumented-generation-cpu).

So the overhead splits into the loop's own cost (loop - plain), the statistics' (instrumented - loop) and the
emission's (emitting - instrumented). The sides run interleaved within each rep, in an order that rotates from rep to
rep, so drift of the machine and position in the rep affect all sides alike. Not included: the service's
once-per-batch NeuronCounts event and its Completion (one small record per request, not per token).

Run: python -m bench.overhead [--models default,gpt2-30m] [--tokens 64,256] [--reps 5] [--device cpu]
     [--kv-cache dynamic|static]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from collections.abc import Callable

import torch
from torch import nn
from transformers import ByT5Tokenizer, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from bench.broker import bench_broker
from evostream.core.bus.admin import delete_topics, ensure_topics
from evostream.models.loading import LoadedModel, load_model, wrap_model
from evostream.producers.emitter import COALESCE_S, StepEmitter
from evostream.producers.generate import GenParams, InstrumentedGenerator, KVCache
from evostream.producers.records import TokenTexts
from evostream.producers.steps import StepBatch, TraceMeta
from evostream.schemas.catalog import TopicSpec

PROMPTS = ["reverse: hello", "sort: benchmark", "add: 12+34", "date: 2024-03-15", "lookup: b; a=1 b=2 c=3 d=4"]
SIDES = {
    "plain": "plain generate()",
    "loop": "our loop, instrumentation off",
    "unsketched": "instrumented, no hidden sketch",
    "instrumented": "instrumented, emitting nothing",
    "emitting": "instrumented + emission to Kafka",
}


def build(name: str, device: str, dtype: torch.dtype) -> LoadedModel:
    """A model by preset name: 'default' (embedded T5), or GPT-2 / Llama built from config (random weights, seeded,
    so that two builds hold the same weights)."""
    if name == "default":
        return load_model("default", device=device, dtype=dtype)
    torch.manual_seed(0)
    presets: dict[str, Callable[[], torch.nn.Module]] = {
        "gpt2-30m": lambda: GPT2LMHeadModel(
            GPT2Config(n_layer=6, n_embd=512, n_head=8, vocab_size=384, bos_token_id=1, eos_token_id=1)
        ),
        "gpt2-356m": lambda: GPT2LMHeadModel(GPT2Config(n_layer=24, n_embd=1024, n_head=16, vocab_size=50257)),
        "llama-1b": lambda: LlamaForCausalLM(
            LlamaConfig(
                num_hidden_layers=16,
                hidden_size=2048,
                intermediate_size=5632,
                num_attention_heads=32,
                num_key_value_heads=8,
                vocab_size=32000,
            )
        ),
    }
    if name not in presets:
        raise SystemExit(f"unknown model {name!r}; choose default, {', '.join(presets)}")
    model = presets[name]().to(device=device, dtype=dtype).eval()
    return wrap_model(model, ByT5Tokenizer(), f"{name}-from-config")


def require_hook_free(model: nn.Module, side: str) -> None:
    """Stop the benchmark unless ``model`` runs without any forward hook: a baseline carrying our hooks would pay
    part of the instrumentation's cost and flatter every ratio."""
    hooked = [n or "<model>" for n, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks]
    global_hooks = len(nn.modules.module._global_forward_hooks) + len(nn.modules.module._global_forward_pre_hooks)
    if hooked or global_hooks:
        raise SystemExit(
            f"{side}: the model must run hook-free, but {len(hooked)} modules carry forward hooks "
            f"({', '.join(hooked[:3])}), and {global_hooks} global ones are registered"
        )


def require_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys() or not all(torch.equal(sa[k], sb[k]) for k in sa):
        raise SystemExit("the plain and the instrumented model objects must hold the same weights")


def timed(fn: Callable[[], int], sync: Callable[[], None], expected_tokens: int, side: str) -> float:
    sync()
    t0 = time.perf_counter()
    n = fn()
    sync()
    elapsed = time.perf_counter() - t0
    if n != expected_tokens:
        raise SystemExit(f"{side}: generated {n} tokens, expected {expected_tokens}; the sides must do equal work")
    return elapsed


def bench_model(
    plain_lm: LoadedModel,
    lm: LoadedModel,
    bootstrap: str,
    topic: str,
    prompts: list[str],
    tokens: int,
    reps: int,
    kv_cache: KVCache = "dynamic",
    coalesce_ms: float = COALESCE_S * 1000,
    linger_ms: float = 5.0,
    our_threads: int | None = None,
) -> dict[str, list[float]]:
    """Seconds per rep of each side. ``plain_lm`` is never hooked; ``lm`` carries the instrumentation's hooks."""
    if plain_lm.model is lm.model:
        raise SystemExit("the plain side needs its own model object")
    sync = (lambda: torch.cuda.synchronize()) if lm.device.type == "cuda" else (lambda: None)
    ptok = plain_lm.tokenizer

    def plain() -> int:
        n = 0
        for p in prompts:
            enc = ptok([p], return_tensors="pt").to(plain_lm.device)
            with torch.inference_mode():
                out = plain_lm.model.generate(
                    **enc, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, pad_token_id=ptok.pad_token_id
                )
            n += out.shape[1] - (1 if plain_lm.is_seq2seq else enc.input_ids.shape[1])
        return n

    bare = InstrumentedGenerator(plain_lm, instrument=False, kv_cache=kv_cache)
    gen = InstrumentedGenerator(lm, kv_cache=kv_cache)
    print(f"our sides decode with the {gen.decode_path} KV cache ({gen.decode_path_reason})", flush=True)
    emitter = StepEmitter(
        bootstrap, topic=topic, producer_config={"linger.ms": linger_ms}, coalesce_s=coalesce_ms / 1000
    )
    texts = TokenTexts(lm.tokenizer)
    params = GenParams(max_new_tokens=tokens, stop_at_eos=False)

    def loop() -> int:
        return sum(len(bare.generate([p], params)[0].token_ids) for p in prompts)

    def discard(_sb: StepBatch) -> None:
        pass

    sketch = gen.sketch

    def unsketched() -> int:  # the same generator and hooks, the sketch left out: what the sketch itself costs
        gen.sketch = None
        try:
            return instrumented(False)
        finally:
            gen.sketch = sketch

    def instrumented(emit: bool) -> int:
        n = 0
        for p in prompts:
            metas = [TraceMeta(uuid.uuid4().hex, "bench", "bench", "bench", 0)]

            def submit(sb: StepBatch, metas: list[TraceMeta] = metas) -> None:
                emitter.submit(sb, metas, lm.version, gen.signal, texts.rows(sb))

            n += len(gen.generate([p], params, submit if emit else discard)[0].token_ids)
            gen.take_neuron_counts()  # as the service does once per batch (here a batch is one prompt)
        if emit:
            emitter.drain()  # every step event encoded and acknowledged by the broker
        return n

    runs: dict[str, Callable[[], int]] = {
        "plain": plain,
        "loop": loop,
        "unsketched": unsketched,
        "instrumented": lambda: instrumented(False),
        "emitting": lambda: instrumented(True),
    }
    expected = tokens * len(prompts)
    names = list(runs)
    default_threads = torch.get_num_threads()
    times: dict[str, list[float]] = {name: [] for name in names}
    try:
        for rep in range(-1, reps):  # rep -1 warms up kernels, the allocator and the broker connection
            for i in range(len(names)):
                name = names[(rep + i) % len(names)]
                if name in ("plain", "loop"):
                    require_hook_free(plain_lm.model, SIDES[name])
                # plain runs with torch's default threads (what its user gets); ours with --our-threads if given
                torch.set_num_threads(default_threads if name == "plain" or our_threads is None else our_threads)
                t = timed(runs[name], sync, expected, SIDES[name])
                if rep >= 0:
                    times[name].append(t)
    finally:
        torch.set_num_threads(default_threads)
        emitter.close()
        gen.close()
        bare.close()
    return times


def report(name: str, params: int, tokens: int, n_prompts: int, times: dict[str, list[float]]) -> None:
    per_rep = tokens * n_prompts
    ms = {side: statistics.median(t) / per_rep * 1000 for side, t in times.items()}
    print(
        f"\n## {name}, {params / 1e6:.1f}M parameters, {tokens} new tokens x {n_prompts} prompts per rep, "
        f"{len(times['plain'])} reps"
    )
    print(f"{'side':<34} {'ms/token':>9}   ratio to plain: median (min..max over reps)")
    for side, label in SIDES.items():
        ratios = [t / p for t, p in zip(times[side], times["plain"], strict=True)]
        spread = f"{statistics.median(ratios):.3f}x ({min(ratios):.3f}..{max(ratios):.3f})" if side != "plain" else ""
        print(f"{label:<34} {ms[side]:9.3f}   {spread}".rstrip())
    loop = ms["loop"] - ms["plain"]
    stats = ms["unsketched"] - ms["loop"]
    sketch = ms["instrumented"] - ms["unsketched"]
    emission = ms["emitting"] - ms["instrumented"]
    sketch_ratios = [s / u for s, u in zip(times["instrumented"], times["unsketched"], strict=True)]
    print(
        f"added ms/token (differences of the medians): loop {loop:+.3f}, statistics {stats:+.3f}, "
        f"hidden sketch {sketch:+.3f}, emission {emission:+.3f}; total {ms['emitting'] - ms['plain']:+.3f}",
        flush=True,
    )
    print(
        f"the hidden sketch: instrumented / unsketched per rep {statistics.median(sketch_ratios):.3f}x "
        f"({min(sketch_ratios):.3f}..{max(sketch_ratios):.3f})",
        flush=True,
    )


def run(bootstrap: str, args: argparse.Namespace) -> None:
    dtype = getattr(torch, args.dtype)
    topic = TopicSpec(
        f"evo.bench.steps.{uuid.uuid4().hex[:8]}", "GenerationStep", "trace_id", 6, "delete", 3600_000, "benchmark"
    )
    ensure_topics(bootstrap, [topic])
    ours = f", ours {args.our_threads}" if args.our_threads else ""
    dev = (
        torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else f"CPU, {torch.get_num_threads()} torch threads (plain, torch's default){ours}"
    )
    prompts = PROMPTS[: args.prompts]
    print(
        f"# {dev}, torch {torch.__version__}, {args.dtype}, batch 1, greedy, {len(prompts)} prompts per rep, "
        f"{args.reps} reps, emitting to {bootstrap}; ms/token: median rep's time per generated token"
    )
    try:
        for name in args.models.split(","):
            # two objects with the same weights, the plain one built before any hook exists and never hooked
            plain_lm = build(name, args.device, dtype)
            lm = build(name, args.device, dtype)
            require_same_weights(plain_lm.model, lm.model)
            require_hook_free(plain_lm.model, SIDES["plain"])
            for n in (int(t) for t in args.tokens.split(",")):
                times = bench_model(
                    plain_lm,
                    lm,
                    bootstrap,
                    topic.name,
                    prompts,
                    n,
                    args.reps,
                    args.kv_cache,
                    args.coalesce_ms,
                    args.linger_ms,
                    args.our_threads,
                )
                report(name, lm.parameter_count(), n, len(prompts), times)
            del lm, plain_lm
    finally:
        delete_topics(bootstrap, [topic.name])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="default,gpt2-30m")
    ap.add_argument("--tokens", default="64,256")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--prompts", type=int, default=len(PROMPTS), help=f"prompts per rep (at most {len(PROMPTS)})")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--coalesce-ms", type=float, default=COALESCE_S * 1000, help="the emitter's step coalescing window")
    ap.add_argument("--linger-ms", type=float, default=5.0, help="the emitter's producer linger.ms")
    ap.add_argument(
        "--our-threads",
        type=int,
        default=None,
        help="torch threads for our sides (plain keeps torch's default, what its user runs)",
    )
    ap.add_argument("--kv-cache", default="dynamic", choices=["dynamic", "static"], help="our sides' KV cache")
    ap.add_argument("--bootstrap", default=None)
    args = ap.parse_args()
    with bench_broker(args.bootstrap) as bootstrap:
        run(bootstrap, args)
    print(
        f"# reproduce: python -m bench.overhead --models {args.models} --tokens {args.tokens} --reps {args.reps} "
        f"--prompts {args.prompts} --device {args.device} --dtype {args.dtype} --kv-cache {args.kv_cache} "
        f"--coalesce-ms {args.coalesce_ms:g} --linger-ms {args.linger_ms:g}"
        + (f" --our-threads {args.our_threads}" if args.our_threads else ""),
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
