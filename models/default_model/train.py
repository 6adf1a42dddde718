"""Train the embedded default model from scratch on the task suite (deterministic; the shipped weights' training run is
recorded in docs/benchmarks.md#the-embedded-default-model).

Run: python -m evostream.models.default_model.train [--steps 10000 --lr 1e-3 --mix lookup=2] [--out DIR]

The defaults are the shipped model's recipe. Lookup (find a key's digit in a table) is learnt late, in a sudden
jump, and only at the lower learning rate: at the higher one it stays far from learnt while every other task converges
(the training runs behind it: docs/benchmarks.md#figures-behind-design-decisions).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from transformers import ByT5Tokenizer, T5Config, T5ForConditionalGeneration

from evostream.models.default_model import WEIGHTS_DIR
from evostream.models.suite.evaluate import eval_set, evaluate
from evostream.models.suite.tasks import Example, training_stream


def default_config(layers: int = 3, d_model: int = 128, heads: int = 4) -> T5Config:
    """A small byte-level T5: ``layers``+``layers`` layers, ``heads`` heads, FFN 4x wide with ReLU (so FFN
    sparsity is real)."""
    return T5Config(
        vocab_size=384,
        d_model=d_model,
        d_kv=d_model // heads,
        d_ff=4 * d_model,
        num_layers=layers,
        num_decoder_layers=layers,
        num_heads=heads,
        feed_forward_proj="relu",
        dropout_rate=0.0,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
        tie_word_embeddings=True,
    )


def training_examples(seed: int, mix: Mapping[str, int]) -> Iterator[Example]:
    """The stream the model trains on: the suite's tasks, never a prompt of the held-out evaluation set, so the
    held-out accuracy is measured on inputs the model has not seen."""
    return training_stream(seed, frozenset(e.prompt for e in eval_set()), mix)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10000)
    ap.add_argument("--layers", type=int, default=3, help="encoder and decoder layers")
    ap.add_argument("--d-model", type=int, default=128, help="model width")
    ap.add_argument("--heads", type=int, default=4, help="attention heads per layer")
    ap.add_argument("--mix", default="lookup=2", help="task weights per round, e.g. lookup=3,add=2")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok = ByT5Tokenizer()
    model = T5ForConditionalGeneration(default_config(args.layers, args.d_model, args.heads)).to(device)
    mix = {k: int(v) for k, v in (item.split("=") for item in args.mix.split(",") if item)}
    n_params = sum(p.numel() for p in model.parameters())
    stream = training_examples(args.seed, mix)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)

    peak: float = args.lr
    warmup: int = args.warmup
    steps: int = args.steps

    def lr_at(step: int) -> float:
        if step < warmup:
            return peak * (step + 1) / warmup
        frac = (step - warmup) / max(1, steps - warmup)
        return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))

    print(f"training {n_params:,} parameters on {device} for {args.steps} steps of {args.batch}", file=sys.stderr)
    t0 = time.perf_counter()
    model.train()
    history = []
    for step in range(args.steps):
        batch = list(itertools.islice(stream, args.batch))
        enc = tok([e.prompt for e in batch], return_tensors="pt", padding=True).to(device)
        labels = tok([e.answer for e in batch], return_tensors="pt", padding=True).input_ids.to(device)
        labels[labels == tok.pad_token_id] = -100
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss = model(**enc, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if (step + 1) % 100 == 0:
            el = time.perf_counter() - t0
            print(
                f"step {step + 1}/{args.steps} loss {loss.item():.4f} {el:.0f}s "
                f"eta {el / (step + 1) * (args.steps - step - 1):.0f}s",
                file=sys.stderr,
                flush=True,
            )
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            acc = evaluate(model, tok, eval_set()[::4])  # a quarter of the held-out set while training
            history.append({"step": step + 1, "loss": round(loss.item(), 5), "accuracy": acc})
            print(f"  eval@{step + 1}: " + " ".join(f"{k}={v:.3f}" for k, v in acc.items()), file=sys.stderr)
    train_s = time.perf_counter() - t0
    acc = evaluate(model, tok)
    model = model.to("cpu")
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    tok.save_pretrained(args.out)
    report = {
        "parameters": n_params,
        "device": device,
        "threads": torch.get_num_threads(),
        "steps": args.steps,
        "batch": args.batch,
        "lr": args.lr,
        "seed": args.seed,
        "layers": args.layers,
        "d_model": args.d_model,
        "heads": args.heads,
        "mix": mix,
        "train_seconds": round(train_s, 1),
        "held_out_accuracy": acc,
        "history": history,
        "torch": torch.__version__,
    }
    (args.out / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("parameters", "train_seconds", "held_out_accuracy")}, indent=2))


if __name__ == "__main__":
    main()
