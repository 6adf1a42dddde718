"""Vocabulary compression: drop the embedding rows (and output-head rows) of tokens the logged traffic never uses.

``used_token_ids`` counts the ids a tokenizer produces on logged texts; ``prune_vocab`` keeps those rows only, in a
new dense id order (the kept old ids in ascending order become 0, 1, 2, ...), and returns a new tokenizer that
produces the new ids. The parent model and tokenizer are never changed. On text made only of kept tokens the pruned
model computes exactly the parent's logits restricted to the kept columns, so greedy decoding agrees wherever the
parent's choice is a kept token.

Two tokenizer kinds are supported; both end as a byte-level ``tokenizers`` BPE wrapped in ``PreTrainedTokenizerFast``
(it saves as ``tokenizer.json`` and reloads through ``AutoTokenizer.from_pretrained``):

- ``ByT5Tokenizer`` (the default model and the test models): it maps byte ``b`` to the fixed id ``b + 3`` and cannot
  be renumbered, so it is first rebuilt as an equivalent fast tokenizer (same ids, the same special tokens with the
  same whitespace stripping, EOS appended) whose vocabulary is one symbol per byte and no merges. Pruning then drops
  bytes: text with a byte outside the kept set encodes that byte as ``<unk>`` (one per byte). Two differences from
  ByT5 remain: text already ending in ``</s>`` gets a second EOS (ByT5 skips it, with a warning that it will stop
  doing so), and decoding an incomplete UTF-8 sequence shows U+FFFD where ByT5 drops the bytes.
- A fast byte-level BPE (GPT-2 / Llama 3 style ``tokenizer.json``): the kept tokens, the 256 base byte symbols and
  every merge parent of a kept token (to closure) stay; merges whose result is dropped go. Text the log saw encodes
  exactly as before (every merge its encoding applied is still there, in the same order), and any other text still
  encodes, without ``<unk>``, into smaller kept pieces (down to single bytes).

Special tokens (pad, eos, unk, bos, sep, cls, mask, the config's decoder start, and those the post-processor adds)
are always kept. Other added tokens (such as ByT5's ``<extra_id_N>``) stay only when kept; a dropped one is no longer
recognised in text, and its characters encode like any other text.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
from torch import nn
from transformers import (
    ByT5Tokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from evostream.consumers.evolution.sites import configs
from evostream.core.errors import EvolutionError

__all__ = ["kept_ids", "prune_vocab", "used_token_ids"]

SPECIAL_NAMES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")
ID_FIELDS = ("pad_token_id", "eos_token_id", "bos_token_id", "decoder_start_token_id", "sep_token_id")
SUPPORTED = "ByT5Tokenizer, or a fast tokenizer whose tokenizer.json is a byte-level BPE (GPT-2 / Llama 3 style)"

Json = dict[str, Any]


def used_token_ids(tokenizer: PreTrainedTokenizerBase, texts: Iterable[str]) -> Counter[int]:
    """How often each id occurs when ``tokenizer`` encodes each of ``texts`` the way the model is fed (special
    tokens such as ByT5's EOS included): the caller sees what the traffic uses and how much."""
    counts: Counter[int] = Counter()
    for text in texts:
        counts.update(int(i) for i in tokenizer(text)["input_ids"])
    return counts


def prune_vocab(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, keep: Iterable[int]
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A new model and tokenizer holding only the tokens ``kept_ids(model, tokenizer, keep)``, renumbered densely
    in old-id order (old id ``kept[n]`` becomes ``n``).

    The input embedding and the output head (tied or not; a head bias too) keep their kept rows, and every config
    the model holds gets the new ``vocab_size`` and remapped pad / eos / bos / decoder start ids (the generation
    config too), so ``save_pretrained`` then the family's own ``from_pretrained`` reloads the result."""
    data, kept = _plan(model, tokenizer, keep)
    remap = {old: new for new, old in enumerate(kept)}
    new_tok = _wrap(tokenizer, Tokenizer.from_str(json.dumps(_renumber(data, remap))), remap)
    return _prune_model(model, kept, remap), new_tok


def kept_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, keep: Iterable[int]) -> list[int]:
    """The old ids ``prune_vocab`` keeps, ascending (so new id ``n`` is old id ``kept[n]``): ``keep``, the special
    tokens, and for a byte-level BPE the base bytes and merge parents (see the module docstring)."""
    return _plan(model, tokenizer, keep)[1]


def _plan(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, keep: Iterable[int]) -> tuple[Json, list[int]]:
    """The tokenizer as ``tokenizer.json`` data and the sorted old ids to keep, after checking ``keep``."""
    inp, _ = _embeddings(model)
    rows = inp.num_embeddings
    asked = sorted({int(i) for i in keep})
    if not asked:
        raise EvolutionError("prune_vocab needs at least one token id to keep (got none)")
    limit = min(rows, len(tokenizer))
    bad = [i for i in asked if not 0 <= i < limit]
    if bad:
        raise EvolutionError(
            f"token ids {bad[:10]} are out of range: the model has {rows} embedding rows and the tokenizer "
            f"{len(tokenizer)} tokens, so ids run from 0 to {limit - 1}"
        )
    data = _tokenizer_json(tokenizer)
    kept = _closure(data, set(asked) | _special_ids(model, tokenizer, data))
    beyond = [i for i in kept if not 0 <= i < rows]
    if beyond:
        raise EvolutionError(
            f"the tokenizer's special tokens or base bytes {beyond[:10]} lie outside the model's {rows} embedding "
            f"rows: the model and tokenizer do not match"
        )
    return data, kept


# --- the model ---------------------------------------------------------------------------------------
def _embeddings(model: PreTrainedModel) -> tuple[nn.Embedding, nn.Linear]:
    inp = model.get_input_embeddings()
    out = model.get_output_embeddings()
    if not isinstance(inp, nn.Embedding) or not isinstance(out, nn.Linear):
        raise EvolutionError(
            f"{type(model).__name__} has no resolvable token embedding and output head (input: "
            f"{type(inp).__name__}, output: {type(out).__name__}); prune_vocab needs an nn.Embedding and an "
            f"nn.Linear head, as a float T5, GPT-2 or Llama language model has (prune before quantizing)"
        )
    if out.weight.shape[0] != inp.num_embeddings:
        raise EvolutionError(
            f"the output head has {out.weight.shape[0]} rows but the embedding {inp.num_embeddings}: "
            f"prune_vocab needs one row per token in both"
        )
    return inp, out


def _prune_model(model: PreTrainedModel, kept: list[int], remap: dict[int, int]) -> PreTrainedModel:
    new = copy.deepcopy(model)
    inp, out = _embeddings(new)
    old_in, old_out = inp.weight, out.weight
    rows = old_in.shape[0]
    index = torch.tensor(kept, dtype=torch.long, device=old_in.device)
    with torch.no_grad():
        w_in = nn.Parameter(old_in.index_select(0, index).clone(), old_in.requires_grad)
        w_out = w_in
        if old_out is not old_in:
            w_out = nn.Parameter(old_out.index_select(0, index).clone(), old_out.requires_grad)
        for module in new.modules():
            if isinstance(module, nn.Embedding) and module.weight is old_in:
                module.weight = w_in
                module.num_embeddings = len(kept)
                if module.padding_idx is not None:
                    module.padding_idx = remap.get(module.padding_idx)
            elif isinstance(module, nn.Linear) and module.weight is old_out:
                module.weight = w_out
                module.out_features = len(kept)
                if module.bias is not None:
                    module.bias = nn.Parameter(module.bias.index_select(0, index).clone(), module.bias.requires_grad)
    for module in new.modules():
        if not isinstance(module, (nn.Embedding, nn.Linear)) and getattr(module, "vocab_size", None) == rows:
            module.vocab_size = len(kept)
        if not isinstance(module, nn.Embedding) and isinstance(getattr(module, "padding_idx", None), int):
            module.padding_idx = remap.get(module.padding_idx)
    for cfg in configs(new):
        cfg.vocab_size = len(kept)
        _remap_fields(cfg, remap)
    if new.generation_config is not None:
        _remap_fields(new.generation_config, remap)
    return new


def _remap_fields(cfg: object, remap: dict[int, int]) -> None:
    for field in ID_FIELDS:
        value = getattr(cfg, field, None)
        if isinstance(value, int):
            setattr(cfg, field, remap[value])
        elif isinstance(value, list):
            setattr(cfg, field, [remap[int(v)] for v in value])


def _config_ids(model: PreTrainedModel) -> set[int]:
    ids: set[int] = set()
    for cfg in [*configs(model), model.generation_config]:
        for field in ID_FIELDS:
            value = getattr(cfg, field, None)
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, list):
                ids.update(int(v) for v in value)
    return ids


# --- the tokenizer ------------------------------------------------------------------------------------
def _special_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data: Json) -> set[int]:
    """Ids that are always kept: the tokenizer's named special tokens, the config's special ids, and the ids the
    post-processor inserts (ByT5's EOS, a BOS)."""
    ids = {getattr(tokenizer, f"{name}_token_id", None) for name in SPECIAL_NAMES}
    found = {int(i) for i in ids if isinstance(i, int)} | _config_ids(model)
    found.update(_processor_ids(data.get("post_processor")))
    return found


def _processor_ids(proc: Json | None) -> Iterator[int]:
    if not proc:
        return
    kind = proc.get("type")
    if kind == "Sequence":
        for sub in proc.get("processors", []):
            yield from _processor_ids(sub)
    elif kind == "TemplateProcessing":
        for entry in proc.get("special_tokens", {}).values():
            yield from (int(i) for i in entry["ids"])
    elif kind in ("RobertaProcessing", "BertProcessing"):
        yield from (int(proc[key][1]) for key in ("sep", "cls"))


def _tokenizer_json(tokenizer: PreTrainedTokenizerBase) -> Json:
    """The tokenizer as a byte-level BPE ``tokenizer.json`` (ByT5 rebuilt as one), or an EvolutionError."""
    if isinstance(tokenizer, ByT5Tokenizer):
        data: Json = json.loads(_byt5_as_bpe(tokenizer).to_str())
        return data
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if isinstance(tokenizer, PreTrainedTokenizerFast) and isinstance(backend, Tokenizer):
        data = json.loads(backend.to_str())
        model = data.get("model", {})
        if model.get("type") == "BPE" and _byte_level(data.get("pre_tokenizer")):
            if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
                raise EvolutionError(
                    f"{type(tokenizer).__name__}: a BPE with a subword prefix or word suffix is not supported; "
                    f"supported: {SUPPORTED}"
                )
            return data
        pre = (data.get("pre_tokenizer") or {}).get("type")
        raise EvolutionError(
            f"{type(tokenizer).__name__} is a fast tokenizer with a {model.get('type')} model and pre-tokenizer "
            f"{pre}, which prune_vocab cannot renumber; supported: {SUPPORTED}"
        )
    raise EvolutionError(f"prune_vocab cannot renumber a {type(tokenizer).__name__}; supported: {SUPPORTED}")


def _byte_level(pre: Json | None) -> bool:
    if not pre:
        return False
    if pre.get("type") == "Sequence":
        return any(_byte_level(p) for p in pre.get("pretokenizers", []))
    return bool(pre.get("type") == "ByteLevel")


def _bytes_to_unicode() -> dict[int, str]:
    """The byte -> character map of byte-level pre-tokenization (GPT-2's): printable bytes stand for themselves,
    the others for the characters from U+0100 on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(others)}}


def _byt5_as_bpe(tok: ByT5Tokenizer) -> Tokenizer:
    """A ``tokenizers`` tokenizer with ByT5's exact ids: one symbol per byte (no merges), ByT5's added tokens with
    their whitespace stripping, ``<unk>`` for a symbol not in the vocabulary, and EOS appended to each sequence."""
    chars = _bytes_to_unicode()
    added = tok.added_tokens_decoder
    vocab: dict[str, int] = {}
    for i in range(len(tok)):
        if i in added:
            vocab[added[i].content] = i
            continue
        symbol = tok.convert_ids_to_tokens(i)
        if not isinstance(symbol, str) or len(symbol) != 1 or ord(symbol) > 255:
            raise EvolutionError(f"ByT5Tokenizer id {i} is neither a byte nor an added token ({symbol!r})")
        vocab[chars[ord(symbol)]] = i
    unk, eos = tok.unk_token, tok.eos_token
    if not isinstance(unk, str) or not isinstance(eos, str) or tok.eos_token_id is None:
        raise EvolutionError("this ByT5Tokenizer has no unk or eos token; prune_vocab needs both")
    out = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=unk, fuse_unk=False))
    out.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    out.decoder = decoders.ByteLevel()
    out.add_special_tokens([_special(a) for _, a in sorted(added.items())])
    out.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, tok.eos_token_id)]
    )
    return out


def _special(token: Any) -> AddedToken:
    """A ByT5 added token as a ``tokenizers`` special token (skipped by ``skip_special_tokens``), same stripping."""
    return AddedToken(
        token.content,
        single_word=token.single_word,
        lstrip=token.lstrip,
        rstrip=token.rstrip,
        normalized=token.normalized,
        special=True,
    )


def _merges(model: Json) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for m in model.get("merges", []):
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        pairs.append((a, b))
    return pairs


def _closure(data: Json, keep: set[int]) -> list[int]:
    """The sorted old ids to keep: ``keep``, then for a BPE that needs them (it has merges, or no unk token to fall
    back to) the base byte symbols, and the parents of every merge whose result is kept, to a fixed point."""
    model = data["model"]
    vocab: dict[str, int] = model["vocab"]
    token = {i: t for t, i in vocab.items()}
    token.update({int(a["id"]): a["content"] for a in data.get("added_tokens", [])})
    kept = {token[i] for i in keep if i in token}
    merges = _merges(model)
    if merges or not model.get("unk_token"):
        kept.update(c for c in _bytes_to_unicode().values() if c in vocab)
    changed = True
    while changed:
        changed = False
        for a, b in reversed(merges):
            if a + b in kept and not (a in kept and b in kept):
                kept.update((a, b))
                changed = True
    ids = set(keep) | {vocab[t] for t in kept if t in vocab}
    return sorted(ids)


def _renumber(data: Json, remap: dict[int, int]) -> Json:
    """``data`` with only the kept tokens, their merges, added tokens and post-processor ids, renumbered."""
    out = copy.deepcopy(data)
    model = out["model"]
    vocab = {t: remap[i] for t, i in model["vocab"].items() if i in remap}
    model["vocab"] = dict(sorted(vocab.items(), key=lambda kv: kv[1]))
    model["merges"] = [
        m
        for m, (a, b) in zip(model.get("merges", []), _merges(model), strict=True)
        if a in vocab and b in vocab and a + b in vocab
    ]
    out["added_tokens"] = [{**a, "id": remap[int(a["id"])]} for a in out.get("added_tokens", []) if a["id"] in remap]
    _remap_processor(out.get("post_processor"), remap)
    if out.get("padding"):
        out["padding"]["pad_id"] = remap[int(out["padding"]["pad_id"])]
    return out


def _remap_processor(proc: Json | None, remap: dict[int, int]) -> None:
    if not proc:
        return
    kind = proc.get("type")
    if kind == "Sequence":
        for sub in proc.get("processors", []):
            _remap_processor(sub, remap)
    elif kind == "TemplateProcessing":
        for entry in proc.get("special_tokens", {}).values():
            entry["ids"] = [remap[int(i)] for i in entry["ids"]]
    elif kind in ("RobertaProcessing", "BertProcessing"):
        for key in ("sep", "cls"):
            proc[key] = [proc[key][0], remap[int(proc[key][1])]]


def _wrap(old: PreTrainedTokenizerBase, backend: Tokenizer, remap: dict[int, int]) -> PreTrainedTokenizerFast:
    """``backend`` as a transformers tokenizer with ``old``'s special tokens (those kept) and settings."""
    kwargs: dict[str, Any] = {}
    for name in SPECIAL_NAMES:
        token, token_id = getattr(old, f"{name}_token", None), getattr(old, f"{name}_token_id", None)
        if isinstance(token, str) and token_id in remap:
            kwargs[f"{name}_token"] = token
    extra = [str(t) for t in getattr(old, "extra_special_tokens", None) or []]
    kept_extra = [t for t in extra if old.convert_tokens_to_ids(t) in remap]
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        extra_special_tokens=kept_extra,
        model_max_length=old.model_max_length,
        padding_side=old.padding_side,
        truncation_side=old.truncation_side,
        clean_up_tokenization_spaces=old.clean_up_tokenization_spaces,
        model_input_names=list(old.model_input_names),
        **kwargs,
    )
