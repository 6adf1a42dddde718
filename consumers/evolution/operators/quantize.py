"""int8 weights: each projection's weight stored in a quarter of its float32 bytes (plus one scale per output
channel), saved as a folder that ``models.loading.load_model`` serves.

Methods (``bench/int8.py`` measures them side by side on the default model; see docs/benchmarks.md#int8-on-cpu):

- ``weight_only`` (the default): every projection's weight becomes int8 with one float32 scale per output channel
  (symmetric: ``scale = max|w_row| / 127``, ``q = round(w / scale)``), dequantized on the fly in each forward.
  Activations stay float, so the only error is the weights' rounding. This is the artifact format: ``save_int8``
  writes it, and ``load_model`` dequantizes it once into the family's own float modules, which compute exactly
  what the in-memory int8 model computes.
- ``dynamic``: ``torch.ao.quantization.quantize_dynamic`` with per-channel int8 weights and activations quantized
  per batch at run time (fbgemm/onednn kernels). Deprecated in torch 2.15 (scheduled for removal, to move to
  torchao); kept to be measured against, not saved: its outputs depend on the activation quantization, which a
  reloaded float model would not reproduce.

What stays float, and why: embeddings (a lookup, no matmul to speed up; the T5 relative position bias too), norms
and biases (tiny), and an output head tied to the input embedding (quantizing it would untie it and store it
twice). An untied output head is a projection like the others and is quantized.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save_file
from torch import Tensor, nn
from torch.nn import functional as nnf
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.pytorch_utils import Conv1D

from evostream.core.errors import EvolutionError
from evostream.models.loading import INT8_MARKER, INT8_WEIGHTS

Method = Literal["weight_only", "dynamic"]
METHODS: tuple[Method, ...] = ("weight_only", "dynamic")
DEFAULT_METHOD: Method = "weight_only"
"""Chosen from bench/int8.py (docs/benchmarks.md#int8-on-cpu): no int8 path was faster than fp32 on CPU for the default
model (tiny matrices, generation bound by per-step overhead); weight-only int8 keeps accuracy, stores the projections'
weights in a quarter of their float32 bytes and reloads exactly."""


class Int8Linear(nn.Module):
    """A Linear (or a GPT-2 Conv1D) whose weight is int8 with per-output-channel float32 scales.

    ``weight`` keeps the original module's layout (``out x in`` for Linear, ``in x out`` for Conv1D) so that the
    families' code that looks at ``.weight`` (its dtype, its shape) keeps working; ``weight_scale`` is shaped to
    broadcast over it. These buffer names are the artifact's tensor names (``models.loading.INT8_SCALE``). The forward
    dequantizes and runs the original module's own operation."""

    weight: Tensor
    weight_scale: Tensor

    def __init__(self, source: nn.Linear | Conv1D) -> None:
        super().__init__()
        self.conv1d = isinstance(source, Conv1D)
        w = source.weight.detach()
        self.float_dtype = w.dtype
        reduce = 0 if self.conv1d else 1  # the input axis; one scale per output channel
        scale = (w.float().abs().amax(dim=reduce, keepdim=True) / 127).clamp(min=torch.finfo(torch.float32).tiny)
        self.register_buffer("weight", torch.round(w.float() / scale).clamp(-127, 127).to(torch.int8))
        self.register_buffer("weight_scale", scale)
        self.bias = None if source.bias is None else nn.Parameter(source.bias.detach().clone())

    def dequantized(self) -> Tensor:
        """The float weight this module computes with (the same product the loader computes once)."""
        return (self.weight.to(torch.float32) * self.weight_scale).to(self.float_dtype)

    def forward(self, x: Tensor) -> Tensor:
        w = self.dequantized()
        if not self.conv1d:
            return nnf.linear(x, w, self.bias)
        # transformers' Conv1D.forward, with the dequantized weight
        shape = (*x.size()[:-1], w.size(1))
        flat = x.view(-1, x.size(-1))
        out = torch.mm(flat, w) if self.bias is None else torch.addmm(self.bias, flat, w)
        return out.view(shape)

    def extra_repr(self) -> str:
        return f"weight={tuple(self.weight.shape)} int8, {'conv1d' if self.conv1d else 'linear'}"


def _projections(model: nn.Module) -> Iterator[tuple[str, nn.Module, str, nn.Linear | Conv1D]]:
    """(path, parent, attribute, module) of every Linear/Conv1D, except an output head tied to an embedding."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    for path, parent in list(model.named_modules()):
        for attr, child in list(parent.named_children()):
            if isinstance(child, nn.Linear | Conv1D) and id(child.weight) not in embeddings:
                yield (f"{path}.{attr}" if path else attr), parent, attr, child


def quantize_int8(model: PreTrainedModel, method: Method = DEFAULT_METHOD) -> PreTrainedModel:
    """A new model with int8 projection weights (see the module docstring); ``model`` is left untouched."""
    if method not in METHODS:
        raise EvolutionError(f"unknown int8 method {method!r}; choose one of {', '.join(METHODS)}")
    if any(isinstance(m, Int8Linear) for m in model.modules()):
        raise EvolutionError("the model is already int8: quantize its float parent instead")
    new = copy.deepcopy(model).eval()
    if method == "dynamic":
        if any(isinstance(m, Conv1D) for m in new.modules()):
            raise EvolutionError(
                "dynamic int8 quantizes nn.Linear only; this model's projections are GPT-2 Conv1D: "
                "use method='weight_only'"
            )
        targets = {path for path, *_ in _projections(new)}
        tied = {path for path, m in new.named_modules() if isinstance(m, nn.Linear) and path not in targets}
        with warnings.catch_warnings():  # its deprecation notice is documented above, not news at every call
            warnings.simplefilter("ignore")
            quantized = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
                new,
                {path: torch.ao.quantization.per_channel_dynamic_qconfig for path in targets}
                | {path: None for path in tied},
                dtype=torch.qint8,
            )
        done: PreTrainedModel = quantized
        return done
    for _, parent, attr, child in _projections(new):
        setattr(parent, attr, Int8Linear(child))
    return new


def int8_modules(model: nn.Module) -> dict[str, Int8Linear]:
    """The weight-only int8 projections of ``model`` by module path."""
    return {path: m for path, m in model.named_modules() if isinstance(m, Int8Linear)}


def save_int8(model: PreTrainedModel, folder: str | Path, tokenizer: PreTrainedTokenizerBase | None = None) -> Path:
    """Write a ``weight_only`` int8 model as a folder ``load_model`` serves: config.json with the
    ``evostream_quantization`` marker, ``model.int8.safetensors`` (int8 weights, their float32 scales, every other
    tensor as it is; a tensor shared by several names stored once, as ``save_pretrained`` does), the generation
    config, and the tokenizer when given (``load_model`` needs one in the folder)."""
    quantized = int8_modules(model)
    if not quantized:
        raise EvolutionError(
            "the model has no weight-only int8 projections: quantize_int8(model) first "
            "(the 'dynamic' method is measured only, never saved)"
        )
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, Tensor] = {}
    seen: set[int] = set()
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen:  # tied: from_pretrained ties it back
            continue
        seen.add(tensor.data_ptr())
        tensors[name] = tensor.detach().contiguous()
    save_file(tensors, str(out / INT8_WEIGHTS), metadata={"format": "pt"})
    config = copy.deepcopy(model.config)
    setattr(
        config,
        INT8_MARKER,
        {
            "method": "weight_only",
            "bits": 8,
            "weights": INT8_WEIGHTS,
            "scales": "float32, per output channel, symmetric",
            "modules": len(quantized),
        },
    )
    config.save_pretrained(out)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


def int8_marker(folder: str | Path) -> dict[str, object] | None:
    """The ``evostream_quantization`` marker of a saved model folder, or None for a float artifact."""
    config = json.loads((Path(folder) / "config.json").read_text())
    marker = config.get(INT8_MARKER)
    return marker if isinstance(marker, dict) else None
