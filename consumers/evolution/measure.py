"""Measured, never estimated: parameters, bytes on disk, and milliseconds per generated token, side by side.

Speed is compared within one run: the models take turns (the order rotates every repetition), each generates the
same prompts greedily for exactly the same number of new tokens, and every repetition is kept so that the spread
is reported with the median."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from evostream.core.errors import EvolutionError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


def parameter_count(model: nn.Module) -> int:
    """Every weight element (a tied embedding counted once, as ``nn.Module.parameters`` yields it), int8 weights
    included: a quantized projection keeps its weight as an int8 buffer, not a parameter, and still counts."""
    int8 = sum(b.numel() for b in model.buffers() if b.dtype == torch.int8)
    return sum(p.numel() for p in model.parameters()) + int8


def weight_bytes(folder: Path) -> int:
    """Bytes of the weight files of a saved model folder (config and tokenizer files are not counted)."""
    files = [f for f in folder.iterdir() if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES)]
    if not files:
        raise EvolutionError(f"{folder} holds no weight file ({', '.join(WEIGHT_SUFFIXES)})")
    return sum(f.stat().st_size for f in files)


@dataclass(frozen=True)
class Speed:
    """Milliseconds per generated token, one value per repetition."""

    runs: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    @property
    def spread(self) -> tuple[float, float]:
        return min(self.runs), max(self.runs)

    def __str__(self) -> str:
        lo, hi = self.spread
        return f"{self.median:.3f} ms/token ({lo:.3f}..{hi:.3f}, {len(self.runs)} runs)"


Generating = tuple[nn.Module, PreTrainedTokenizerBase]


@torch.inference_mode()
def _generate_all(
    model: nn.Module, tok: PreTrainedTokenizerBase, prompts: Sequence[str], new_tokens: int, batch_size: int
) -> None:
    device = next(model.parameters()).device
    for i in range(0, len(prompts), batch_size):
        enc = tok(list(prompts[i : i + batch_size]), return_tensors="pt", padding=True).to(device)
        model.generate(
            **enc,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,  # type: ignore[operator]
            num_beams=1,
        )


def ms_per_token(
    models: Mapping[str, Generating],
    prompts: Sequence[str],
    new_tokens: int = 16,
    reps: int = 5,
    batch_size: int = 16,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Speed]:
    """Greedy generation of exactly ``new_tokens`` per prompt, the models taking turns; one warm-up pass each."""
    if not prompts or new_tokens < 1 or reps < 1:
        raise EvolutionError("measuring speed needs prompts, new_tokens >= 1 and reps >= 1")
    names = list(models)
    for name in names:
        _generate_all(*models[name], prompts, new_tokens, batch_size)
    runs: dict[str, list[float]] = {name: [] for name in names}
    tokens = len(prompts) * new_tokens
    for rep in range(reps):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for name in order:
            t0 = time.perf_counter()
            _generate_all(*models[name], prompts, new_tokens, batch_size)
            runs[name].append((time.perf_counter() - t0) * 1000 / tokens)
        if progress is not None:
            progress(f"speed: repetition {rep + 1}/{reps}")
    return {name: Speed(tuple(v)) for name, v in runs.items()}
