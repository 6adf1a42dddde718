"""The decode engine alone (no Kafka, no embedding): static batches against continuous batching, side by side.

Why continuous batching wins or loses is a matter of forward passes, and ``bench.serving`` measures it under the
noise of a broker, an emitter and a client on the same two cores. Here the service's two loops run in one process on
the same requests, instrumented as the service runs them (statistics unpacked per step, nothing emitted):

- static: requests taken ``--max-batch`` at a time in arrival order, grouped by generation parameters as the service
  groups them (a request's ``max_new_tokens`` is one of them), each group run to completion;
- continuous: a closed loop keeping the batch full, newcomers admitted between steps (each admission a prefill of
  its own) once at least ``--admit-min`` slots are free (default: half the batch, ``evostream serve``'s default
  count), each row leaving when done. Every request is waiting from the start, so the service's other admission
  rule (the oldest has waited 20 ms) is left out: here it would admit at every step, as ``--admit-min 1`` does.

Workloads: ``suite`` (the default model on the suite's prompts, ``max_new_tokens`` 32: short answers that end at EOS,
all about as long) and ``mixed`` (GPT-2 30M built from config, which rarely meets its EOS, with ``max_new_tokens``
drawn, seeded, from 4..128: lengths that differ by 32x, as open-ended traffic does). Every request's tokens must be the
same in both loops (greedy); a mismatch is counted and printed. Prints tokens/s, forward passes and the slot-steps spent
on rows already finished (static batches' padding), min / median / max over ``--reps``, the loops' order rotated per
rep.

Run: python -m bench.batching [--workloads suite,mixed] [--requests 192] [--max-batch 8] [--admit-min 4] [--reps 3]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from bench.overhead import PROMPTS, build
from bench.stats import spread
from evostream.models.suite.evaluate import eval_set
from evostream.producers.batching import Row, RunningBatch
from evostream.producers.generate import GenParams, InstrumentedGenerator

LENGTHS = (4, 8, 16, 32, 64, 128)


@dataclass
class Run:
    tokens: list[list[int]]
    seconds: float
    forwards: int
    slot_steps: int
    """Rows times forward passes: the work done, useful or not."""


def workload(name: str, n: int) -> tuple[str, list[str], list[int]]:
    """(model preset, prompts, max_new_tokens per request)."""
    if name == "suite":
        prompts = [e.prompt for e in eval_set()]
        return "default", [prompts[i % len(prompts)] for i in range(n)], [32] * n
    if name == "mixed":
        rng = random.Random(0)
        return "gpt2-30m", [PROMPTS[i % len(PROMPTS)] for i in range(n)], [rng.choice(LENGTHS) for _ in range(n)]
    raise SystemExit(f"unknown workload {name!r}: suite or mixed")


def run_static(gen: InstrumentedGenerator, prompts: list[str], limits: list[int], max_batch: int) -> Run:
    out: list[list[int]] = [[] for _ in prompts]
    count = {"forwards": 0, "slots": 0}

    def on_step(sb: object) -> None:
        count["forwards"] += 1
        count["slots"] += group_size

    t0 = time.perf_counter()
    for at in range(0, len(prompts), max_batch):
        groups: dict[int, list[int]] = {}
        for i in range(at, min(at + max_batch, len(prompts))):
            groups.setdefault(limits[i], []).append(i)
        for limit, idx in groups.items():
            group_size = len(idx)
            results = gen.generate([prompts[i] for i in idx], GenParams(max_new_tokens=limit), on_step)
            for i, res in zip(idx, results, strict=True):
                out[i] = res.token_ids
    return Run(out, time.perf_counter() - t0, count["forwards"], count["slots"])


def run_continuous(
    gen: InstrumentedGenerator, prompts: list[str], limits: list[int], max_batch: int, admit_min: int
) -> Run:
    out: list[list[int]] = [[] for _ in prompts]
    count = {"forwards": 0, "slots": 0}

    def on_step(sb: object, rows: list[Row]) -> None:
        count["forwards"] += 1
        count["slots"] += len(rows)

    def collect(done: list[Row]) -> None:
        for row in done:
            out[row.key] = row.result.token_ids

    batch = RunningBatch(gen, max_batch)
    nxt = 0
    t0 = time.perf_counter()
    while nxt < len(prompts) or len(batch):
        if nxt < len(prompts) and batch.free and (not len(batch) or batch.free >= min(admit_min, max_batch)):
            take = range(nxt, min(nxt + batch.free, len(prompts)))
            nxt = take.stop
            collect(batch.admit([prompts[i] for i in take], [Row(i, limits[i]) for i in take], on_step))
        collect(batch.step(on_step))
    return Run(out, time.perf_counter() - t0, count["forwards"], count["slots"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default="suite,mixed")
    ap.add_argument("--requests", type=int, default=192)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument(
        "--admit-min",
        type=int,
        default=0,
        help="continuous: admit once this many slots are free (0: half the batch, evostream serve's default)",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads (evostream serve's default here: CPUs - 1)")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args(argv)
    args.admit_min = args.admit_min or max(1, args.max_batch // 2)
    torch.set_num_threads(args.threads)
    loops: dict[str, Callable[[InstrumentedGenerator, list[str], list[int]], Run]] = {
        "static": lambda g, p, n: run_static(g, p, n, args.max_batch),
        "continuous": lambda g, p, n: run_continuous(g, p, n, args.max_batch, args.admit_min),
    }
    summary: list[str] = []
    for name in args.workloads.split(","):
        preset, prompts, limits = workload(name, args.requests)
        gen = InstrumentedGenerator(build(preset, "cpu", torch.float32))
        for warm in loops.values():  # warm-up of both loops
            warm(gen, prompts[: args.max_batch], limits[: args.max_batch])
        rates: dict[str, list[float]] = {k: [] for k in loops}
        forwards: dict[str, int] = {}
        slots: dict[str, int] = {}
        reference: list[list[int]] | None = None
        mismatches = 0
        for rep in range(args.reps):
            order = list(loops)[rep % 2 :] + list(loops)[: rep % 2]
            for loop in order:
                r = loops[loop](gen, prompts, limits)
                n_tokens = sum(len(t) for t in r.tokens)
                rates[loop].append(n_tokens / r.seconds)
                forwards[loop], slots[loop] = r.forwards, r.slot_steps
                if reference is None:
                    reference = r.tokens
                else:
                    mismatches += sum(a != b for a, b in zip(reference, r.tokens, strict=True))
                print(
                    f"{name} rep {rep + 1} {loop}: {n_tokens} tokens in {r.seconds:.2f} s = {rates[loop][-1]:.0f} "
                    f"tokens/s, {r.forwards} forward passes, {r.slot_steps} slot-steps",
                    flush=True,
                )
        assert reference is not None
        useful = sum(len(t) for t in reference)
        lengths = sorted(set(limits))
        summary.append(
            f"{name} ({preset}, {args.requests} requests, {useful} tokens, max_new_tokens {lengths}); "
            f"requests whose tokens differ between the loops: {mismatches}"
        )
        for loop in loops:
            summary.append(
                f"  {loop:10s} tokens/s {spread(rates[loop], '.0f')}; forward passes {forwards[loop]}, "
                f"{slots[loop] / forwards[loop]:.2f} rows each; slot-steps {slots[loop]} "
                f"({slots[loop] - useful} on finished rows)"
            )
        ratios = [c / s for c, s in zip(rates["continuous"], rates["static"], strict=True)]
        summary.append(f"  continuous / static, per rep: {spread(ratios, '.2f')}")
    print(
        f"\nover {args.reps} reps, min / median / max ({args.threads} torch thread(s), --max-batch {args.max_batch}, "
        f"--admit-min {args.admit_min}, CPU):"
    )
    print("\n".join(summary))
    print("# reproduce: python -m bench.batching " + " ".join(sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
