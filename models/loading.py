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
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from evostream.errors import EvoError
from models.default_model import MODEL_ID, WEIGHTS_DIR

DEFAULT_MODEL = "default"
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
        raise ModelLoadError(f"the embedded model is missing from {path}: run python -m models.default_model.train")
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
        model = cls.from_pretrained(ref, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(ref, local_files_only=local_only)
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(f"cannot load model {source!r}: {e}") from e
    return wrap_model(model.to(device).eval(), tokenizer, name, weights_digest(path) if path.exists() else None)


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
        raise ModelLoadError(f"model {source!r} is neither an existing folder nor in the local Hugging Face cache "
                             f"({hf_constants.HF_HUB_CACHE}); evostream loads models offline")  # fmt: skip


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
