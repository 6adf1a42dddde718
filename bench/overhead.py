"""Overhead of evostream's instrumented generation against plain ``model.generate()``, side by side in one run.

Both paths decode greedily the same prompts for exactly N new tokens (plain generate with min_new_tokens=N, ours with
stop_at_eos off). The instrumented path computes every step statistic on the device and emits one Avro GenerationStep
per token through the background emitter to a real Kafka broker (acks=all, idempotent); delivery is awaited inside
the timed region.

Run: python -m bench.overhead [--models default,gpt2-30m] [--tokens 64,256] [--reps 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from collections.abc import Callable

import torch
from transformers import ByT5Tokenizer, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from bench.broker import bench_broker
from evostream.bus.admin import delete_topics, ensure_topics
from producers.emitter import StepEmitter
from producers.generate import GenParams, InstrumentedGenerator
from producers.loading import LoadedModel, load_model, wrap_model
from producers.records import TokenTexts
from producers.steps import StepBatch, TraceMeta
from schemas.catalog import TopicSpec

PROMPTS = ["reverse: hello", "sort: benchmark", "add: 12+34", "date: 2024-03-15", "lookup: b; a=1 b=2 c=3 d=4"]


def build(name: str, device: str, dtype: torch.dtype) -> LoadedModel:
    """A model by preset name: 'default' (embedded T5), or GPT-2 / Llama built from config (random weights)."""
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


def timed(fn: Callable[[], None], sync: Callable[[], None]) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def bench_model(
    lm: LoadedModel, bootstrap: str, topic: str, prompts: list[str], tokens: int, reps: int, emit: bool = True
) -> tuple[list[float], list[float]]:
    tok = lm.tokenizer
    sync = (lambda: torch.cuda.synchronize()) if lm.device.type == "cuda" else (lambda: None)

    def plain() -> None:
        for p in prompts:
            enc = tok([p], return_tensors="pt").to(lm.device)
            with torch.inference_mode():
                lm.model.generate(**enc, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                                  pad_token_id=tok.pad_token_id)  # fmt: skip

    gen = InstrumentedGenerator(lm)
    emitter = StepEmitter(bootstrap, topic=topic)
    texts = TokenTexts(tok)
    params = GenParams(max_new_tokens=tokens, stop_at_eos=False)

    def instrumented() -> None:
        for p in prompts:
            metas = [TraceMeta(uuid.uuid4().hex, "bench", "bench", "bench", 0)]

            def on_step(sb: StepBatch, metas: list[TraceMeta] = metas) -> None:
                if emit:
                    emitter.submit(sb, metas, lm.version, gen.signal, texts.rows(sb))

            gen.generate([p], params, on_step)
        emitter.drain()  # every step event encoded and acknowledged by the broker

    plain()  # warm-up: kernels, allocator, broker connection
    instrumented()
    # interleaved, so that drift of the machine affects both sides alike
    plain_t, inst_t = [], []
    for _ in range(reps):
        plain_t.append(timed(plain, sync))
        inst_t.append(timed(instrumented, sync))
    emitter.close()
    gen.close()
    return plain_t, inst_t


def run(bootstrap: str, args: argparse.Namespace) -> None:
    dtype = getattr(torch, args.dtype)
    topic = TopicSpec(f"evo.bench.steps.{uuid.uuid4().hex[:8]}", "GenerationStep", "trace_id", 6, "delete",
                      3600_000, "benchmark")  # fmt: skip
    ensure_topics(bootstrap, [topic])
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    prompts = PROMPTS[: args.prompts]
    sink = f"emitting to {bootstrap}" if args.emit == "kafka" else "emitting nothing"
    print(f"# {dev}, torch {torch.__version__}, {args.dtype}, batch 1, greedy, {len(prompts)} prompts per rep, "
          f"{args.reps} reps, {sink}")  # fmt: skip
    print(f"{'model':>22} {'params':>7} {'tokens':>6} {'plain min':>10} {'instr min':>10} {'ratio min':>9} "
          f"{'plain med':>10} {'instr med':>10} {'ratio med':>9} {'ms/token +':>10}")  # fmt: skip
    try:
        for name in args.models.split(","):
            lm = build(name, args.device, dtype)
            params = lm.parameter_count()
            for n in (int(t) for t in args.tokens.split(",")):
                plain_t, inst_t = bench_model(lm, bootstrap, topic.name, prompts, n, args.reps, args.emit == "kafka")
                pm, im = min(plain_t), min(inst_t)
                pd, idn = statistics.median(plain_t), statistics.median(inst_t)
                extra = (idn - pd) / (n * len(prompts)) * 1000
                print(f"{name:>22} {params / 1e6:6.1f}M {n:6d} {pm:9.3f}s {im:9.3f}s {im / pm:8.3f}x "
                      f"{pd:9.3f}s {idn:9.3f}s {idn / pd:8.3f}x {extra:+9.3f}", flush=True)  # fmt: skip
            del lm
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
    ap.add_argument("--bootstrap", default=None)
    ap.add_argument(
        "--emit",
        default="kafka",
        choices=["kafka", "none"],
        help="none: compute the step statistics but publish nothing (isolates the emission's share)",
    )
    args = ap.parse_args()
    with bench_broker(args.bootstrap) as bootstrap:
        run(bootstrap, args)
    print(f"# reproduce: python -m bench.overhead --models {args.models} --tokens {args.tokens} --reps {args.reps} "
          f"--prompts {args.prompts} --device {args.device} --dtype {args.dtype} --emit {args.emit}",
          file=sys.stderr)  # fmt: skip


if __name__ == "__main__":
    main()
