"""What the route's token watch costs per token: serving with a route against serving without one, side by side in one
run.

Every side decodes greedily the same prompts in one batch for exactly N new tokens each (stop_at_eos off; every
call's token count is checked) with the service's instrumented generator, and emits one GenerationStep per token
through the step emitter to a real Kafka broker, delivery awaited inside the timed region: the per-step path of
``evostream serve``. The routed sides add what a routed service adds per step (``producers.routing.Watches``): the
GenerationStep records of the watched rows built on the serving thread, and each row's ``TokenWatch`` folding its
record and scoring the risk probe on the steps so far. The watches' gate never moves (a token gate of 1), so every side
generates every token.

- serving: no route;
- watched: a watch per row, its probe reading the token and layer features;
- watched+sketch: the same, its probe also reading the hidden-state sketch of every step.

The same per-step work is also timed alone (``alone``: the watches fed the steps of one recorded generation, no
decoding, no emission), which a loaded machine disturbs much less than the end-to-end sides.

Not included: what a route adds once per request (the prompt embedded before generation instead of beside the next
batch, one RouteDecision), nor the reference's answers. The sides run interleaved within each rep, in an order that
rotates from rep to rep.

Run: python -m bench.route_overhead [--model default] [--tokens 64] [--batch 1,8] [--reps 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Callable

import torch

from bench.broker import bench_broker
from evostream.core.bus.admin import delete_topics, ensure_topics
from evostream.models.loading import load_model
from evostream.models.risk_probe import RiskProbe, feature_names
from evostream.producers.emitter import StepEmitter
from evostream.producers.generate import GenParams, InstrumentedGenerator
from evostream.producers.records import TokenTexts
from evostream.producers.routing import Watches
from evostream.producers.steps import StepBatch, TraceMeta
from evostream.routing.policy import LevelGate, TokenWatch
from evostream.schemas.catalog import TopicSpec

PROMPTS = ["reverse: hello", "sort: benchmark", "add: 12+34", "date: 2024-03-15", "lookup: b; a=1 b=2 c=3 d=4"]
SIDES = ("serving", "watched", "watched+sketch")


def probe(num_layers: int, sketch_dim: int) -> RiskProbe:
    """A probe of the served model's shape; its weights do not change its cost (a small one on every feature)."""
    names = feature_names(num_layers, sketch_dim)
    n = len(names)
    return RiskProbe("bench", num_layers, tuple(names), (0.0,) * n, (1.0,) * n, (0.01,) * n, -3.0, 1.0, {}, sketch_dim)


def bench(
    bootstrap: str, topic: str, model: str, tokens: int, batch: int, reps: int, device: str
) -> dict[str, list[float]]:
    lm = load_model(model, device=device)
    gen = InstrumentedGenerator(lm)
    texts = TokenTexts(lm.tokenizer)
    emitter = StepEmitter(bootstrap, topic=topic)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
    params = GenParams(max_new_tokens=tokens, stop_at_eos=False)
    never = LevelGate(1, 0.2, prompt_gate=0.5, token_gate=1.0)
    sketch_dim = 2 * gen.sketch.dim if gen.sketch is not None else 0  # numbers per step: a mean half, a last half
    probes = {"watched": probe(gen.num_layers, 0), "watched+sketch": probe(gen.num_layers, sketch_dim)}

    def side(name: str) -> Callable[[], int]:
        def run() -> int:
            metas = [TraceMeta(uuid.uuid4().hex, "bench", "bench", "bench", 0) for _ in prompts]
            watches = None
            if name in probes:
                watches = Watches([TokenWatch(probes[name], never) for _ in prompts], metas, lm.version, gen.signal)

            def on_step(sb: StepBatch) -> list[int]:
                t = texts.rows(sb)
                emitter.submit(sb, metas, lm.version, gen.signal, t)
                return watches.on_step(sb, t) if watches is not None else []

            n = sum(len(r.token_ids) for r in gen.generate(prompts, params, on_step))
            gen.take_neuron_counts()
            emitter.drain()
            if watches is not None and (watches.moved or any(w.sums.n != tokens for w in watches.watches if w)):
                raise SystemExit(f"{name}: a watch moved or missed a step; the sides must do equal work")
            return n

        return run

    times: dict[str, list[float]] = {s: [] for s in SIDES}
    try:
        for rep in range(-1, reps):  # rep -1 warms up
            for i in range(len(SIDES)):
                name = SIDES[(rep + i) % len(SIDES)]
                t0 = time.perf_counter()
                n = side(name)()
                elapsed = time.perf_counter() - t0
                if n != tokens * batch:
                    raise SystemExit(f"{name}: {n} tokens, expected {tokens * batch}")
                if rep >= 0:
                    times[name].append(elapsed)
    finally:
        emitter.close()
        gen.close()
    return times


def alone(model: str, tokens: int, batch: int, reps: int, device: str) -> dict[str, float]:
    """Median ms per step of the watches alone, per side, fed the recorded steps of one generation of the batch."""
    lm = load_model(model, device=device)
    gen = InstrumentedGenerator(lm)
    texts = TokenTexts(lm.tokenizer)
    steps: list[StepBatch] = []
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
    gen.generate(prompts, GenParams(max_new_tokens=tokens, stop_at_eos=False), steps.append)
    sketch_dim = 2 * gen.sketch.dim if gen.sketch is not None else 0
    gen.close()
    never = LevelGate(1, 0.2, prompt_gate=0.5, token_gate=1.0)
    metas = [TraceMeta(uuid.uuid4().hex, "bench", "bench", "bench", 0) for _ in prompts]
    out = {}
    for name, dim in (("watched", 0), ("watched+sketch", sketch_dim)):
        p = probe(gen.num_layers, dim)
        runs = []
        for _ in range(reps):
            watches = Watches([TokenWatch(p, never) for _ in prompts], metas, lm.version, gen.signal)
            t0 = time.perf_counter()
            for sb in steps:
                watches.on_step(sb, texts.rows(sb))
            runs.append((time.perf_counter() - t0) / len(steps) * 1000)
        out[name] = statistics.median(runs)
    return out


def report(model: str, tokens: int, batch: int, times: dict[str, list[float]]) -> None:
    per_rep = tokens * batch
    base = times["serving"]
    print(f"\n## {model}, batch {batch}, {tokens} new tokens per row, {len(base)} reps")
    print(f"{'side':<16} {'ms/token':>9} {'ms/step':>9}   ratio to serving: median (min..max over reps)")
    for s in SIDES:
        ms = statistics.median(times[s]) / per_rep * 1000
        step = statistics.median(times[s]) / tokens * 1000
        ratios = [t / b for t, b in zip(times[s], base, strict=True)]
        spread = "" if s == "serving" else f"{statistics.median(ratios):.3f}x ({min(ratios):.3f}..{max(ratios):.3f})"
        print(f"{s:<16} {ms:9.3f} {step:9.3f}   {spread}".rstrip(), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--torch-threads", type=int, default=1, help="as evostream serve on this 2-core machine: CPUs - 1")
    ap.add_argument("--bootstrap", default=None)
    args = ap.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(args.torch_threads)
    with bench_broker(args.bootstrap) as bootstrap:
        topic = TopicSpec(
            f"evo.bench.steps.{uuid.uuid4().hex[:8]}", "GenerationStep", "trace_id", 6, "delete", 3600_000, "benchmark"
        )
        ensure_topics(bootstrap, [topic])
        print(f"# {args.device}, torch {torch.__version__}, {torch.get_num_threads()} torch threads, to {bootstrap}")
        try:
            for b in (int(x) for x in args.batch.split(",")):
                times = bench(bootstrap, topic.name, args.model, args.tokens, b, args.reps, args.device)
                report(args.model, args.tokens, b, times)
                for name, ms in alone(args.model, args.tokens, b, args.reps, args.device).items():
                    print(f"{name} alone: {ms:.3f} ms per step, {ms / b:.3f} ms per watched row", flush=True)
        finally:
            delete_topics(bootstrap, [topic.name])


if __name__ == "__main__":
    main()
