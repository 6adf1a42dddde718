"""Evolution operators on the embedded default model, measured side by side with the parent in one run (CPU).

For each operator alone (no recovery) and for the default recipe with distillation: bytes of the saved weights,
parameters, ms per generated token (greedy, exactly N new tokens, the models taking turns, median and min..max over
repetitions) and per-task exact-match accuracy on the held-out suite. Nothing is estimated by formula.

Run: python -m bench.evolution [--steps 1500] [--per-task 200] [--reps 5] [--batch 1] [--recipe R ...]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from evostream.consumers.evolution.cycle import CycleConfig, _suite_pairs, adapt, vocabulary
from evostream.consumers.evolution.distill import DistillConfig, distill, mixed_stream
from evostream.consumers.evolution.inputs import Observed
from evostream.consumers.evolution.measure import ms_per_token, parameter_count, weight_bytes
from evostream.consumers.evolution.operators.quantize import int8_modules, quantize_int8, save_int8
from evostream.consumers.evolution.operators.vocab import prune_vocab
from evostream.consumers.evolution.recipe import Recipe, build
from evostream.models.loading import load_model
from evostream.models.suite.evaluate import eval_set, evaluate
from evostream.models.suite.tasks import make_split


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1500, help="distillation steps for the recovered candidates")
    ap.add_argument("--per-task", type=int, default=200, help="held-out prompts per task")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument(
        "--batch",
        type=int,
        action="append",
        help="generation batch size of the speed measurement (repeat for several, one table each; default 1)",
    )
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument(
        "--recipe",
        action="append",
        help="recovered candidates (default: drop=1,heads=0.5,ffn=0.5); "
        "each is measured as distilled and as int8, and with adapter=RANK an adapter trains after distillation",
    )
    ap.add_argument("--adapter-steps", type=int, default=300, help="training steps of a recipe's adapter")
    args = ap.parse_args()
    batches = args.batch or [1]

    def say(msg: str) -> None:
        print(f"# {msg}", file=sys.stderr, flush=True)

    torch.manual_seed(0)
    parent = load_model("default", device="cpu")
    tok = parent.tokenizer
    toks: dict[str, Any] = {}
    """The tokenizer of a model that has its own (a pruned vocabulary); the others use the parent's."""
    analysis = [(e.prompt, e.answer) for e in make_split("analysis", 16)]
    held = list(eval_set(per_task=args.per_task))
    models: dict[str, Any] = {"parent": parent.model}
    alone = {
        "heads 2/4": Recipe(keep_heads=0.5),
        "ffn 256/512": Recipe(keep_ffn=0.5),
        "drop 1 decoder layer": Recipe(drop_layers=1),
    }
    for name, recipe in alone.items():
        say(f"building {name}")
        models[name + " (no recovery)"] = build(parent.model, tok, recipe, analysis)
    say("building int8")
    models["int8 (weight-only)"] = quantize_int8(parent.model)
    for text in args.recipe or ["drop=1,heads=0.5,ffn=0.5"]:
        recipe = Recipe.parse(text)
        say(f"building {recipe.name} and distilling it for {args.steps} steps")
        student = build(parent.model, tok, recipe, analysis)
        distill(
            student,
            parent.model,
            tok,
            mixed_stream([], _suite_pairs(0), 0.0),
            DistillConfig(steps=args.steps),
            progress=say,
        )
        structure = Recipe(**{**recipe.params(), "adapter_rank": 0, "vocab": False, "int8": False})
        name = f"{structure.name} + distil {args.steps}"
        if recipe.adapter_rank:
            cfg = CycleConfig(distill=DistillConfig(steps=args.steps), adapter_steps=args.adapter_steps)
            student, _ = adapt(student, tok, Observed(parent.version), recipe.adapter_rank, cfg, say)
            name += f" + adapter{recipe.adapter_rank} ({args.adapter_steps} steps)"
        models[name] = student
        models[name + " + int8"] = quantize_int8(student)
        if recipe.vocab:  # the vocabulary of the suite's stream (the bench has no logged traffic)
            small, toks[name + " + vocab + int8"] = prune_vocab(student, tok, vocabulary(tok, Observed(""), 0))
            models[name + " + vocab + int8"] = quantize_int8(small)

    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, m in models.items():
            folder = Path(tmp) / str(len(rows))
            if int8_modules(m):
                save_int8(m, folder)
            else:
                m.save_pretrained(folder)
            rows[name] = {"bytes": weight_bytes(folder), "params": parameter_count(m)}
    for name, m in models.items():
        say(f"accuracy of {name}")
        rows[name]["acc"] = evaluate(m, toks.get(name, tok), held)
    prompts = [e.prompt for e in held[:: max(1, len(held) // 32)]][:32]
    base = rows["parent"]
    tasks = [t for t in base["acc"] if t != "mean"]
    for batch in batches:
        say(f"speed at batch {batch}: {args.reps} repetitions, the models taking turns")
        pairs = {n: (m, toks.get(n, tok)) for n, m in models.items()}
        speed = ms_per_token(pairs, prompts, args.new_tokens, args.reps, batch)
        print(
            f"# {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads; held-out "
            f"{args.per_task}/task; speed: {len(prompts)} prompts, batch {batch}, {args.new_tokens} new tokens, "
            f"{args.reps} reps"
        )
        print(
            "| model | bytes | x smaller | parameters | ms/token median (min..max) | x faster | "
            + " | ".join(tasks)
            + " | mean |"
        )
        print("| --- " * (7 + len(tasks)) + "|")
        for name, r in rows.items():
            s = speed[name]
            lo, hi = s.spread
            accs = " | ".join(f"{r['acc'][t]:.3f}" for t in [*tasks, "mean"])
            print(
                f"| {name} | {r['bytes']:,} | {base['bytes'] / r['bytes']:.2f} | {r['params']:,} | {s.median:.3f} "
                f"({lo:.3f}..{hi:.3f}) | {speed['parent'].median / s.median:.2f} | {accs} |"
            )
    recipes = "".join(f" --recipe {r}" for r in args.recipe or [])
    print(
        f"# reproduce: python -m bench.evolution --steps {args.steps} --per-task {args.per_task} --reps {args.reps}"
        f"{''.join(f' --batch {b}' for b in batches)} --adapter-steps {args.adapter_steps}{recipes}"
    )


if __name__ == "__main__":
    main()
