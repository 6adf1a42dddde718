"""int8 on CPU, measured before chosen: speed, bytes on disk and per-task accuracy of the default model's int8 paths
against fp32, side by side in one run.

Sides (all from the same embedded model, ``load_model("default", device="cpu")``):

- fp32: a fresh load, default settings;
- weight_only: ``quantize_int8(model, "weight_only")`` in memory (int8 weights, per-output-channel float32 scales,
  dequantized on every forward);
- weight_only, reloaded: that model saved with ``save_int8`` and loaded back through ``load_model`` (the serving
  path: dequantized once at load into fp32 modules);
- dynamic: ``quantize_int8(model, "dynamic")``, i.e. ``torch.ao.quantization.quantize_dynamic`` with per-channel
  int8 weights and activations quantized at run time (deprecated in torch 2.15);
- int8pack_mm: the weight_only tensors run through ``torch._weight_int8pack_mm`` (a private ATen CPU kernel for
  weight-only int8 matmul, no extra dependency), defined here only.

Speed: greedy generation of a fixed set of suite prompts (one per task, cycled) for exactly ``--new-tokens`` new
tokens each (``min_new_tokens = max_new_tokens``), at batch 1 (``--prompts-b1`` prompts, one at a time) and at batch
16 (one batch of 16). ms per generated token = wall time / (prompts x new tokens). Every side is warmed up once,
then the sides take turns in an order that rotates every repetition; the median and min..max over the repetitions
are printed, and each side's ratio to fp32 within the same repetition (paired, so load that comes and goes on a
shared machine cancels more). "weight_only, reloaded" runs the very kernels fp32 runs: its ratio is the noise
floor. Threads: ``torch.set_num_threads(--threads)`` (1 by default: the numbers compare kernels, not how many cores
a shared machine had free).

Bytes: each side's weight file as written (fp32: ``save_pretrained``; weight_only and int8pack_mm: the int8 artifact,
the same tensors; dynamic: ``torch.save`` of its state dict, packed weights included), and, read back from the
safetensors files, the bytes of the quantized projections' tensors (weights plus scales) against their fp32 bytes.

Accuracy: exact match per task on ``eval_set(--per-task)`` (scored as ``models.suite.evaluate.evaluate`` does, from
one ``predict`` pass), and the share of those prompts whose answer equals fp32's.

Run: python -m bench.int8 [--reps 7] [--new-tokens 16] [--prompts-b1 6] [--per-task 200] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from evostream.consumers.evolution.operators.quantize import Int8Linear, int8_modules, quantize_int8, save_int8
from evostream.models.loading import INT8_WEIGHTS, load_model
from evostream.models.suite.evaluate import eval_set, predict
from evostream.models.suite.tasks import TASKS, Example

BATCH = 16


class PackMM(nn.Module):
    """An Int8Linear computed by ``torch._weight_int8pack_mm`` (x @ (int8 weight)^T * per-channel scale)."""

    weight: Tensor
    scales: Tensor

    def __init__(self, src: Int8Linear) -> None:
        super().__init__()
        if src.conv1d:
            raise ValueError("int8pack_mm takes an out x in weight; this bench runs T5 (Linear only)")
        self.register_buffer("weight", src.weight.clone())
        self.register_buffer("scales", src.weight_scale.reshape(-1).clone())
        self.bias = src.bias

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, x.size(-1)).contiguous()
        out = torch._weight_int8pack_mm(flat, self.weight, self.scales.to(x.dtype))
        out = out.reshape(*x.shape[:-1], -1)
        return out if self.bias is None else out + self.bias


def with_packmm(int8_model: PreTrainedModel) -> PreTrainedModel:
    import copy

    new = copy.deepcopy(int8_model)
    for path in int8_modules(new):
        parent_path, _, attr = path.rpartition(".")
        parent = new.get_submodule(parent_path)
        setattr(parent, attr, PackMM(getattr(parent, attr)))
    return new


def fixed_prompts(n: int) -> list[str]:
    """``n`` suite prompts, one task after another."""
    by_task: dict[str, list[str]] = {t.name: [] for t in TASKS}
    for e in eval_set():
        by_task[e.task].append(e.prompt)
    names = [t.name for t in TASKS]
    return [by_task[names[i % len(names)]][i // len(names)] for i in range(n)]


@torch.inference_mode()
def generate(model: nn.Module, tok: PreTrainedTokenizerBase, prompts: Sequence[str], batch: int, new: int) -> int:
    """Generate exactly ``new`` tokens for every prompt; returns the number of new tokens (checked)."""
    made = 0
    for i in range(0, len(prompts), batch):
        enc = tok(list(prompts[i : i + batch]), return_tensors="pt", padding=True)
        out = model.generate(**enc, max_new_tokens=new, min_new_tokens=new, do_sample=False, num_beams=1)  # type: ignore[operator]
        start = 1 if bool(getattr(model.config, "is_encoder_decoder", False)) else enc.input_ids.shape[1]
        made += (out.shape[1] - start) * out.shape[0]
    if made != len(prompts) * new:
        raise RuntimeError(f"generated {made} tokens, expected {len(prompts) * new}")
    return made


def speed(
    sides: dict[str, PreTrainedModel], tok: PreTrainedTokenizerBase, prompts: list[str], batch: int, new: int, reps: int
) -> dict[str, list[float]]:
    names = list(sides)
    for name in names:
        generate(sides[name], tok, prompts, batch, new)
    runs: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            t0 = time.perf_counter()
            tokens = generate(sides[name], tok, prompts, batch, new)
            runs[name].append((time.perf_counter() - t0) * 1000 / tokens)
    return runs


def tensor_bytes(file: Path, names: set[str] | None = None) -> int:
    """Bytes of the tensors of a safetensors file (all, or those named)."""
    total = 0
    with safe_open(str(file), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
            if names is None or key in names:
                t = f.get_tensor(key)
                total += t.numel() * t.element_size()
    return total


def accuracy(examples: Sequence[Example], answers: Sequence[str]) -> dict[str, float]:
    """Exact match per task and mean, as ``models.suite.evaluate.evaluate`` scores (it would generate again)."""
    hits: dict[str, list[bool]] = {}
    for e, a in zip(examples, answers, strict=True):
        hits.setdefault(e.task, []).append(a.strip() == e.answer)
    acc = {task: sum(h) / len(h) for task, h in hits.items()}
    acc["mean"] = sum(acc.values()) / len(acc)
    return acc


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--prompts-b1", type=int, default=6)
    ap.add_argument("--per-task", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"python -m bench.int8 {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip())
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), quantized engine "
        f"{torch.backends.quantized.engine}"
    )

    base = load_model("default", device="cpu")
    tok = base.tokenizer
    weight_only = quantize_int8(base.model, "weight_only")
    with tempfile.TemporaryDirectory() as tmp:
        fp32_dir, int8_dir = Path(tmp) / "fp32", Path(tmp) / "int8"
        base.model.save_pretrained(fp32_dir)
        save_int8(weight_only, int8_dir, tok)
        reloaded = load_model(str(int8_dir), device="cpu").model
        dynamic = quantize_int8(base.model, "dynamic")
        torch.save(dynamic.state_dict(), Path(tmp) / "dynamic.pt")
        fp32_file, int8_file = fp32_dir / "model.safetensors", int8_dir / INT8_WEIGHTS
        projections = set(int8_modules(weight_only))
        weights = {f"{p}.weight" for p in projections}
        scales = {f"{p}.weight_scale" for p in projections}
        disk = {
            "fp32": fp32_file.stat().st_size,
            "weight_only": int8_file.stat().st_size,
            "weight_only, reloaded": int8_file.stat().st_size,
            "dynamic": (Path(tmp) / "dynamic.pt").stat().st_size,
            "int8pack_mm": int8_file.stat().st_size,
        }
        proj_fp32 = tensor_bytes(fp32_file, weights)
        proj_int8, proj_scales = tensor_bytes(int8_file, weights), tensor_bytes(int8_file, scales)
    sides: dict[str, PreTrainedModel] = {
        "fp32": base.model,
        "weight_only": weight_only,
        "weight_only, reloaded": reloaded,
        "dynamic": dynamic,
        "int8pack_mm": with_packmm(weight_only),
    }

    print(f"\nbytes on disk: the {len(projections)} quantized projections' tensors, read from the weight files")
    print(
        f"  fp32 weights: {proj_fp32:,} B; int8: {proj_int8:,} B + scales {proj_scales:,} B = "
        f"{proj_int8 + proj_scales:,} B ({proj_fp32 / (proj_int8 + proj_scales):.2f}x smaller)"
    )
    print("bytes on disk: each side's weight file")
    for name, size in disk.items():
        print(f"  {name:24s} {size:>10,} B  ({disk['fp32'] / size:.2f}x smaller than fp32)")

    prompts = fixed_prompts(BATCH)
    for batch, chosen in ((1, prompts[: args.prompts_b1]), (BATCH, prompts)):
        runs = speed(sides, tok, chosen, batch, args.new_tokens, args.reps)
        print(
            f"\nms per generated token, batch {batch} ({len(chosen)} prompts x {args.new_tokens} new tokens, "
            f"{args.reps} reps): median (min..max); ratio to fp32 within each rep: median (min..max)"
        )
        for name, r in runs.items():
            ratios = [a / b for a, b in zip(r, runs["fp32"], strict=True)]
            print(
                f"  {name:24s} {statistics.median(r):7.3f} ({min(r):.3f}..{max(r):.3f})  "
                f"x{statistics.median(ratios):.2f} ({min(ratios):.2f}..{max(ratios):.2f})"
            )

    examples = list(eval_set(args.per_task))
    reference = predict(base.model, tok, [e.prompt for e in examples])
    print(f"\naccuracy on eval_set({args.per_task}) ({len(examples)} prompts): per task, mean, same answer as fp32")
    names = [t.name for t in TASKS]
    print(f"  {'':24s} " + " ".join(f"{n:>7s}" for n in [*names, "mean"]) + "  same-as-fp32")
    for name, model in sides.items():
        answers = reference if name == "fp32" else predict(model, tok, [e.prompt for e in examples])
        acc = accuracy(examples, answers)
        agree = sum(a == b for a, b in zip(answers, reference, strict=True)) / len(examples)
        print(f"  {name:24s} " + " ".join(f"{acc[n]:7.3f}" for n in [*names, "mean"]) + f"  {agree:12.3f}")


if __name__ == "__main__":
    main()
