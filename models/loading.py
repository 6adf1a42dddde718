"""Load any Hugging Face model id or local path (seq2seq or causal) with its tokenizer; default = the embedded model.

Loading never reaches a hub at run time: ``local_files_only`` is on unless the caller allows downloads, so a model id
works when it is in the local Hugging Face cache.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import try_to_load_from_cache
from huggingface_hub.errors import HFValidationError
from safetensors.torch import load_file
from transformers import (
    MODEL_FOR_CAUSAL_LM_MAPPING,
    MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING,
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from evostream.core.artifacts import parse_manifest
from evostream.core.errors import ArtifactError, EvoError
from evostream.models.default_model import MODEL_ID, WEIGHTS_DIR

DEFAULT_MODEL = "default"
INT8_MARKER = "evostream_quantization"
"""config.json key of an int8 artifact (written by the evolution consumer's ``save_int8``):
``{"method": ..., "bits": 8, "weights": INT8_WEIGHTS, ...}``."""
INT8_WEIGHTS = "model.int8.safetensors"
"""The int8 artifact's weight file: each quantized weight ``<module>.weight`` as int8 beside ``<module>.weight_scale``
(float32, shaped to broadcast over the weight: one scale per output channel); every other tensor as saved."""
INT8_SCALE = "_scale"
hf_logging.disable_progress_bar()  # a service's stderr is for its own messages


class ModelLoadError(EvoError):
    """The model or its tokenizer could not be loaded."""


@dataclass
class LoadedModel:
    """A model ready to generate, with what evostream needs to know about it."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    version: str
    """Registry version: ``name@<12 hex of the weights' sha256>`` for local weights, else the name."""
    is_seq2seq: bool
    attn_implementation: str

    @property
    def device(self) -> torch.device:
        device: torch.device = next(self.model.parameters()).device
        return device

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def weights_digest(path: Path) -> str | None:
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:12]


def load_model(
    source: str = DEFAULT_MODEL,
    device: str | None = None,
    dtype: torch.dtype | None = None,
    attn_implementation: Literal["eager", "sdpa"] | None = None,
    allow_download: bool = False,
) -> LoadedModel:
    """Load ``source`` ("default", a local folder, or a cached Hugging Face id) onto ``device``."""
    path = WEIGHTS_DIR if source == DEFAULT_MODEL else Path(source).expanduser()
    name = MODEL_ID if source == DEFAULT_MODEL else source
    ref = str(path) if path.exists() else source
    if source == DEFAULT_MODEL and not (path / "config.json").exists():
        raise ModelLoadError(
            f"the embedded model is missing from {path}: run python -m evostream.models.default_model.train"
        )
    _check_source(source, path, allow_download)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    local_only = not allow_download
    try:
        config = AutoConfig.from_pretrained(ref, local_files_only=local_only)
        is_seq2seq = bool(getattr(config, "is_encoder_decoder", False))
        cls = AutoModelForSeq2SeqLM if is_seq2seq else AutoModelForCausalLM
        kwargs: dict[str, object] = {"local_files_only": local_only}
        if dtype is not None:
            kwargs["dtype"] = dtype
        if attn_implementation is not None:
            kwargs["attn_implementation"] = attn_implementation
        if getattr(config, INT8_MARKER, None) is not None:
            model = _load_int8(config, path, is_seq2seq, kwargs)
        else:
            model = cls.from_pretrained(ref, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(ref, local_files_only=local_only)
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(f"cannot load model {source!r}: {e}") from e
    return wrap_model(model.to(device).eval(), tokenizer, name, weights_digest(path) if path.exists() else None)


def int8_weights_file(folder: Path, name: object) -> Path:
    """The int8 weight file that ``config.json`` names, refused unless it is a plain file name inside ``folder``.

    ``config.json`` is data, not a path the loader may follow: an absolute name, a ``..``, a sub-folder, or a link
    that resolves outside the folder would let an artifact read weights from anywhere on the host. Inside the
    artifact store (``sha256/<hex>/files``) the name must also be one the artifact's manifest lists, so the weights
    are the hashed bytes the governance event names."""
    if not isinstance(name, str) or not name or name in {".", ".."} or name != Path(name).name or "\\" in name:
        raise ModelLoadError(f"{folder}: config.json names int8 weights {name!r}; only a plain file name is allowed")
    root = folder.resolve()
    file = (folder / name).resolve()
    if file.parent != root:
        raise ModelLoadError(f"{folder}: int8 weights {name!r} resolve to {file}, outside the artifact's folder")
    manifest = folder / ".." / "manifest.json"
    if folder.name == "files" and manifest.is_file():
        try:
            listed = {entry.path for entry in parse_manifest(manifest.read_bytes())}
        except ArtifactError as e:
            raise ModelLoadError(f"{folder}: {e}") from e
        if name not in listed:
            raise ModelLoadError(f"{folder}: int8 weights {name!r} are not listed in the artifact's manifest")
    if not file.is_file():
        raise ModelLoadError(f"{folder}: config.json marks an int8 artifact but its weight file {name} is missing")
    return file


def _load_int8(config: PretrainedConfig, folder: Path, is_seq2seq: bool, kwargs: dict[str, object]) -> PreTrainedModel:
    """An int8 artifact, dequantized once into the family's own float modules (``weight = int8 * scale``).

    The served model then runs the float kernels: on CPU no int8 path measured faster for these models (bench/int8.py;
    see docs/benchmarks.md#int8-on-cpu), and its outputs equal those of the in-memory int8 model, which computes the
    same product on every forward. The marker leaves the loaded config: what is in memory is a float model."""
    marker = getattr(config, INT8_MARKER)
    if not isinstance(marker, dict) or marker.get("bits") != 8:
        raise ModelLoadError(f"{folder}: config.json's {INT8_MARKER} is {marker!r}; only 8-bit artifacts load")
    file = int8_weights_file(folder, marker.get("weights", INT8_WEIGHTS))
    tensors = load_file(file)
    state: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if name.endswith(INT8_SCALE):
            if name.removesuffix(INT8_SCALE) not in tensors:
                raise ModelLoadError(f"{file}: scale {name} has no weight {name.removesuffix(INT8_SCALE)}")
            continue
        scale = tensors.get(name + INT8_SCALE)
        if (tensor.dtype == torch.int8) != (scale is not None):
            raise ModelLoadError(
                f"{file}: {name} is {tensor.dtype} {'with' if scale is not None else 'without'} "
                f"a scale; an int8 weight needs one and only int8 weights have one"
            )
        state[name] = tensor if scale is None else tensor.to(torch.float32) * scale
    delattr(config, INT8_MARKER)
    mapping = MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING if is_seq2seq else MODEL_FOR_CAUSAL_LM_MAPPING
    model, info = mapping[type(config)].from_pretrained(
        None, config=config, state_dict=state, output_loading_info=True, **kwargs
    )
    wrong = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if wrong:
        raise ModelLoadError(f"{file} does not fit {type(model).__name__}: {wrong}")
    loaded: PreTrainedModel = model
    return loaded


def _looks_like_path(source: str) -> bool:
    """A Hugging Face id is ``name`` or ``owner/name``; anything else the user typed is meant as a folder."""
    return source.startswith(("/", ".", "~")) or source.count("/") > 1 or "\\" in source


def _check_source(source: str, path: Path, allow_download: bool) -> None:
    """Say plainly what is wrong with ``source`` before transformers answers with a message about repo-id syntax
    or an internet connection it never tried."""
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelLoadError(f"{path} is not a model folder: it has no config.json")
        return
    if _looks_like_path(source):
        raise ModelLoadError(f"no model folder at {source}: the path does not exist")
    if allow_download:
        return
    try:
        cached = try_to_load_from_cache(source, "config.json")
    except HFValidationError as e:
        raise ModelLoadError(f"model {source!r} is neither an existing folder nor a Hugging Face id: {e}") from e
    if not isinstance(cached, str):
        raise ModelLoadError(
            f"model {source!r} is neither an existing folder nor in the local Hugging Face cache "
            f"({hf_constants.HF_HUB_CACHE}); evostream loads models offline"
        )


def wrap_model(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str, digest: str | None = None
) -> LoadedModel:
    """Describe an in-memory model (built from a config in tests, or a candidate of evolution)."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=name,
        version=f"{name}@{digest}" if digest else name,
        is_seq2seq=bool(getattr(model.config, "is_encoder_decoder", False)),
        attn_implementation=str(getattr(model.config, "_attn_implementation", "eager")),
    )
