"""Tiny models of each family, built from config (no download), for hook and generation tests."""

from __future__ import annotations

import math

import torch
from transformers import (
    ByT5Tokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

from evostream.models.loading import LoadedModel, wrap_model

FAMILIES = ("t5", "gpt2", "llama")


def tiny(family: str, attn: str = "sdpa", seed: int = 0, varied: bool = False) -> LoadedModel:
    """A 2-layer model of ``family`` with random weights.

    With the library's own initialisation these models collapse into repeating one token (tiny T5 repeats the
    decoder start token, tiny GPT-2 answers EOS at once: the tied output head favours the last input), so a token
    comparison on them compares almost nothing. ``varied`` asks for an untied output head (T5 keeps it tied and only
    drops its output scaling) and redraws every weight matrix with standard deviation 2/sqrt(its smaller
    dimension), which makes greedy decoding produce varied tokens in all three families."""
    torch.manual_seed(seed)
    common: dict[str, object] = {"vocab_size": 384, "attn_implementation": attn}
    if varied:
        common["tie_word_embeddings"] = False
    if family == "t5":
        model = T5ForConditionalGeneration(
            T5Config(
                d_model=32,
                d_kv=8,
                d_ff=64,
                num_layers=2,
                num_decoder_layers=2,
                num_heads=4,
                decoder_start_token_id=0,
                pad_token_id=0,
                eos_token_id=1,
                **common,
            )
        )
    elif family == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, bos_token_id=1, eos_token_id=1, **common))
    elif family == "llama":
        model = LlamaForCausalLM(
            LlamaConfig(
                num_hidden_layers=2,
                hidden_size=32,
                intermediate_size=64,
                num_attention_heads=4,
                num_key_value_heads=2,
                bos_token_id=1,
                eos_token_id=1,
                pad_token_id=0,
                **common,
            )
        )
    else:
        raise ValueError(family)
    if varied:
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 2:
                    p.normal_(0.0, 2.0 / math.sqrt(min(p.shape)))
    return wrap_model(model.eval(), ByT5Tokenizer(), f"tiny-{family}")
