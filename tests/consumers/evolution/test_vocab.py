"""Vocabulary pruning keeps only the embedding and head rows of the tokens traffic uses: the pruned model computes
the parent's logits restricted to the kept columns, reloads through its family's own from_pretrained, and its new
tokenizer (a fast byte-level one) encodes kept text to exactly the renumbered old ids."""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoTokenizer,
    ByT5Tokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2Model,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    T5ForConditionalGeneration,
)

from evostream.consumers.evolution.measure import parameter_count
from evostream.consumers.evolution.operators.vocab import kept_ids, prune_vocab, used_token_ids
from evostream.core.errors import EvolutionError
from evostream.models.loading import LoadedModel, load_model, wrap_model
from evostream.models.suite.evaluate import eval_set
from evostream.models.suite.tasks import make_split
from tests.producers.models import tiny

RELOAD = {"t5": T5ForConditionalGeneration, "gpt2": GPT2LMHeadModel, "llama": LlamaForCausalLM}
BYT5_SPECIALS = {0, 1, 2}  # pad, eos, unk
EDGE_TEXTS = ["a </s> b", "x<pad>y", " <unk> ", "<extra_id_3>z", "", "  two  spaces ", "\n\ttab", "é 日本語", "x" * 40]


pytestmark = pytest.mark.usefixtures("one_thread")


def prompts(per_task: int = 2) -> list[str]:
    return [e.prompt for e in make_split("eval", per_task)]


def tied_llama() -> LoadedModel:
    """tiny("llama") is untied (Llama's default); the same model with its head tied to the embedding."""
    torch.manual_seed(0)
    config = LlamaConfig(
        num_hidden_layers=2,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=1,
        eos_token_id=1,
        pad_token_id=0,
        vocab_size=384,
        tie_word_embeddings=True,
    )
    return wrap_model(LlamaForCausalLM(config).eval(), ByT5Tokenizer(), "tiny-llama-tied")


# (family, how to build it, tied?) T5 always ties its head in transformers 5 (T5Config forces it), so both are tied.
CASES: dict[str, tuple[Callable[[], LoadedModel], bool]] = {
    "t5": (lambda: tiny("t5"), True),
    "t5-varied": (lambda: tiny("t5", varied=True), True),
    "gpt2": (lambda: tiny("gpt2"), True),
    "gpt2-untied": (lambda: tiny("gpt2", varied=True), False),
    "llama-tied": (tied_llama, True),
    "llama": (lambda: tiny("llama", varied=True), False),
}


def logits(model: PreTrainedModel, enc: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        if model.config.is_encoder_decoder:
            start = torch.full((enc["input_ids"].shape[0], 1), model.config.decoder_start_token_id)
            dec = torch.cat([start, enc["input_ids"][:, :5]], dim=1)  # a few decoder steps over real tokens
            out: torch.Tensor = model(**enc, decoder_input_ids=dec).logits
        else:
            out = model(**enc).logits
    return out


def renumbered(ids: list[list[int]], kept: list[int]) -> list[list[int]]:
    new = {old: n for n, old in enumerate(kept)}
    return [[new[i] for i in row] for row in ids]


@pytest.mark.parametrize("case", list(CASES))
def test_prune_keeps_the_used_rows_and_the_parents_logits(case: str, tmp_path: Path) -> None:
    build, tied = CASES[case]
    parent = build()
    fam = case.split("-")[0]
    before = {k: v.clone() for k, v in parent.model.state_dict().items()}
    head, emb = parent.model.get_output_embeddings(), parent.model.get_input_embeddings()
    assert (head.weight is emb.weight) == tied
    d_model, rows = emb.weight.shape[1], emb.weight.shape[0]
    texts = prompts()
    used = used_token_ids(parent.tokenizer, texts)

    model, tok = prune_vocab(parent.model, parent.tokenizer, used)
    kept = kept_ids(parent.model, parent.tokenizer, used)
    assert kept == sorted(set(used) | BYT5_SPECIALS)
    n = len(kept)
    assert 30 < n < rows
    new_emb, new_head = model.get_input_embeddings(), model.get_output_embeddings()
    assert new_emb.weight.shape == (n, d_model) and new_head.weight.shape == (n, d_model)
    assert (new_head.weight is new_emb.weight) == tied
    torch.testing.assert_close(new_emb.weight, emb.weight[kept], rtol=0, atol=0)
    torch.testing.assert_close(new_head.weight, head.weight[kept], rtol=0, atol=0)
    removed = (rows - n) * d_model * (1 if tied else 2)
    assert parameter_count(parent.model) - parameter_count(model) == removed
    assert model.config.vocab_size == n and len(tok) == n
    assert (model.config.pad_token_id, model.config.eos_token_id) == (parent.model.config.pad_token_id, 1)
    # the parent is untouched
    assert parent.model.get_input_embeddings().weight.shape == (rows, d_model)
    for k, v in parent.model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)

    old_enc = parent.tokenizer(texts, return_tensors="pt", padding=True)
    enc = tok(texts, return_tensors="pt", padding=True)
    assert enc["input_ids"].tolist() == renumbered(old_enc["input_ids"].tolist(), kept)
    expected = logits(parent.model, dict(old_enc))[..., kept]
    torch.testing.assert_close(logits(model, dict(enc)), expected)

    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    reloaded = RELOAD[fam].from_pretrained(tmp_path).eval()
    reloaded_tok = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.config.vocab_size == n and reloaded.get_input_embeddings().weight.shape == (n, d_model)
    assert (reloaded.get_output_embeddings().weight is reloaded.get_input_embeddings().weight) == tied
    assert reloaded_tok(texts, padding=True)["input_ids"] == enc["input_ids"].tolist()
    torch.testing.assert_close(logits(reloaded, dict(enc)), expected)


def test_the_pruned_default_model_answers_the_suite_as_its_parent(tmp_path: Path) -> None:
    """Pruned to the ids of the suite's prompts and answers, the default model gives the same greedy answers."""
    parent = load_model(device="cpu")
    used = used_token_ids(parent.tokenizer, [s for e in eval_set() for s in (e.prompt, e.answer)])
    model, tok = prune_vocab(parent.model, parent.tokenizer, used)
    kept = kept_ids(parent.model, parent.tokenizer, used)
    assert model.config.vocab_size == len(kept) < 100  # bytes of lowercase, uppercase, digits, punctuation
    examples = [e for i, e in enumerate(eval_set()) if i % 200 < 2]  # two of each task
    old_enc = parent.tokenizer([e.prompt for e in examples], return_tensors="pt", padding=True)
    enc = tok([e.prompt for e in examples], return_tensors="pt", padding=True)
    with torch.no_grad():
        old = parent.model.generate(**old_enc, max_new_tokens=16, do_sample=False, num_beams=1)
        new = model.generate(**enc, max_new_tokens=16, do_sample=False, num_beams=1)
    assert set(old.flatten().tolist()) <= set(kept)  # the parent's answers only use kept tokens
    assert new.tolist() == renumbered(old.tolist(), kept)
    old_text = parent.tokenizer.batch_decode(old, skip_special_tokens=True)
    assert tok.batch_decode(new, skip_special_tokens=True) == old_text
    assert sum(a.strip() == e.answer for a, e in zip(old_text, examples, strict=True)) >= len(examples) // 2
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    served = load_model(str(tmp_path), device="cpu")
    assert parameter_count(served.model) == parameter_count(model)
    served_ids = served.model.generate(**enc, max_new_tokens=16, do_sample=False)
    assert served.tokenizer.batch_decode(served_ids, skip_special_tokens=True) == old_text


def test_used_token_ids_counts_what_the_model_is_fed() -> None:
    tok = ByT5Tokenizer()
    assert used_token_ids(tok, ["aa", "ab"]) == Counter({100: 3, 101: 1, 1: 2})  # byte b is id b + 3; EOS is 1
    assert used_token_ids(tok, []) == Counter()


def test_the_rebuilt_byt5_tokenizer_matches_byt5() -> None:
    """Keeping every id gives ByT5 rebuilt as a fast tokenizer: the same ids, padding, pairs and decoding."""
    parent = tiny("t5")
    model, tok = prune_vocab(parent.model, parent.tokenizer, range(384))
    assert isinstance(tok, PreTrainedTokenizerFast) and len(tok) == 384
    assert parameter_count(model) == parameter_count(parent.model)
    slow = parent.tokenizer
    texts = [s for e in make_split("eval", 20) for s in (e.prompt, e.answer)] + EDGE_TEXTS
    for text in texts:
        ids = slow(text)["input_ids"]
        assert tok(text)["input_ids"] == ids, text
        assert tok.decode(ids) == slow.decode(ids)
        assert tok.decode(ids, skip_special_tokens=True) == slow.decode(ids, skip_special_tokens=True)
    assert tok(texts[:4], padding=True)["input_ids"] == slow(texts[:4], padding=True)["input_ids"]
    assert tok("ab", "cd")["input_ids"] == slow("ab", "cd")["input_ids"]
    # documented difference: ByT5 appends no EOS to text already ending in one (and warns it will); this one does
    assert tok("hi</s>")["input_ids"] == [107, 108, 1, 1]


def test_the_pruned_byt5_tokenizer_renumbers_kept_text_and_unks_the_rest() -> None:
    parent = tiny("gpt2")
    texts = [s for e in make_split("eval", 10) for s in (e.prompt, e.answer)]
    used = used_token_ids(parent.tokenizer, texts)
    _, tok = prune_vocab(parent.model, parent.tokenizer, used)
    kept = kept_ids(parent.model, parent.tokenizer, used)
    old = parent.tokenizer(texts)["input_ids"]
    assert tok(texts)["input_ids"] == renumbered(old, kept)
    assert tok.batch_decode(tok(texts)["input_ids"], skip_special_tokens=True) == texts
    assert "!" not in "".join(texts) and "~" not in "".join(texts)
    a = kept.index(ord("a") + 3)
    assert tok("a!~a")["input_ids"] == [a, 2, 2, a, 1]  # one <unk> per byte outside the kept set, then EOS
    assert tok("a </s> a")["input_ids"] == [a, 1, a, 1]  # special tokens in text still strip their whitespace


# --- a byte-level BPE (GPT-2 style tokenizer.json) ---------------------------------------------------------
def trained_bpe() -> PreTrainedTokenizerFast:
    """A byte-level BPE trained here on suite texts, its special token added last (so its id moves when pruned)."""
    texts = [s for e in make_split("train", 30) for s in (e.prompt, e.answer)]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    backend.train_from_iterator(texts, trainer)
    eos = "<|endoftext|>"
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=eos, bos_token=eos, pad_token=eos)


def merges(tok: PreTrainedTokenizerBase) -> list[list[str]]:
    backend = tok.backend_tokenizer
    found: list[list[str]] = json.loads(backend.to_str())["model"]["merges"]
    return found


def test_a_byte_level_bpe_keeps_seen_text_exact_and_still_encodes_the_rest(tmp_path: Path) -> None:
    tok = trained_bpe()
    size, eos = len(tok), tok.eos_token_id
    assert size == 401 and eos == 400
    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=size, bos_token_id=eos, eos_token_id=eos)
    parent = GPT2LMHeadModel(config).eval()
    seen = prompts(3)
    used = used_token_ids(tok, seen)
    model, new_tok = prune_vocab(parent, tok, used)
    kept = kept_ids(parent, tok, used)

    vocab = tok.get_vocab()
    base = {vocab[c] for c in pre_tokenizers.ByteLevel.alphabet()}
    assert len(base) == 256 and base <= set(kept) and set(used) <= set(kept) and eos in kept
    assert set(used) | base | {eos} < set(kept) < set(range(size))  # merge parents were added, unused tokens dropped
    assert model.config.vocab_size == len(new_tok) == len(kept)
    assert model.config.eos_token_id == model.config.bos_token_id == new_tok.eos_token_id == len(kept) - 1
    assert model.generation_config.eos_token_id == len(kept) - 1
    kept_merges = merges(new_tok)
    assert 0 < len(kept_merges) < len(merges(tok))
    assert all(m in merges(tok) for m in kept_merges)  # in the same order, as a subsequence
    assert [merges(tok).index(m) for m in kept_merges] == sorted(merges(tok).index(m) for m in kept_merges)

    assert new_tok(seen)["input_ids"] == renumbered(tok(seen)["input_ids"], kept)
    unseen = ["hello world: 12345 ÄÖÜ 日本", "zzzz qqq", "sort: zyxwvut"]
    for text in unseen:
        ids = new_tok(text)["input_ids"]
        assert new_tok.decode(ids) == text and tok.decode([kept[i] for i in ids]) == text
    assert any(not set(tok(t)["input_ids"]) <= set(kept) for t in unseen)  # some used dropped tokens: they fell back

    enc = new_tok(seen, return_tensors="pt", padding=True)
    old_enc = tok(seen, return_tensors="pt", padding=True)
    torch.testing.assert_close(logits(model, dict(enc)), logits(parent, dict(old_enc))[..., kept])
    model.save_pretrained(tmp_path)
    new_tok.save_pretrained(tmp_path)
    reloaded_tok = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded_tok(seen + unseen)["input_ids"] == new_tok(seen + unseen)["input_ids"]
    reloaded = GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(logits(reloaded, dict(enc)), logits(parent, dict(old_enc))[..., kept])


def test_pruning_a_pruned_byte_tokenizer_drops_more_bytes() -> None:
    """The rebuilt ByT5 tokenizer prunes again (it has <unk> to fall back to, so its bytes are not forced)."""
    parent = tiny("llama")
    model, tok = prune_vocab(parent.model, parent.tokenizer, used_token_ids(parent.tokenizer, prompts()))
    again, tok2 = prune_vocab(model, tok, used_token_ids(tok, ["add: 1+2"]))
    assert len(tok2) == again.config.vocab_size == len(set("add: 1+2")) + 3
    assert tok2.decode(tok2("add: 2+1")["input_ids"], skip_special_tokens=True) == "add: 2+1"


# --- errors -------------------------------------------------------------------------------------------------
def test_bad_keeps_are_refused() -> None:
    parent = tiny("t5")
    with pytest.raises(EvolutionError, match="at least one token id"):
        prune_vocab(parent.model, parent.tokenizer, [])
    for bad in ([-1], [384], [5, 10**6]):
        with pytest.raises(EvolutionError, match=r"out of range.*384 embedding rows"):
            prune_vocab(parent.model, parent.tokenizer, bad)
    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=300, bos_token_id=0, eos_token_id=0)
    small = GPT2LMHeadModel(config)  # the tokenizer has 401 tokens, its EOS is 400
    with pytest.raises(EvolutionError, match=r"special tokens or base bytes \[400\] lie outside the model's 300"):
        prune_vocab(small, trained_bpe(), [5])


def test_a_model_without_an_embedding_and_head_is_refused() -> None:
    torch.manual_seed(0)
    bare = GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=384))
    with pytest.raises(EvolutionError, match="GPT2Model has no resolvable token embedding and output head"):
        prune_vocab(bare, ByT5Tokenizer(), [5])


def test_an_unsupported_tokenizer_is_refused() -> None:
    parent = tiny("gpt2")
    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    words = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    with pytest.raises(EvolutionError, match=r"WordLevel model.*supported: ByT5Tokenizer"):
        prune_vocab(parent.model, words, [1])
    not_byte_level = copy.deepcopy(trained_bpe())
    not_byte_level.backend_tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(EvolutionError, match="BPE model and pre-tokenizer Whitespace"):
        prune_vocab(parent.model, not_byte_level, [1])
