from __future__ import annotations

import numpy as np
import pytest

from evostream.routing.cache import CacheParams, ResponseCache, content, exact_key
from evostream.routing.policy import RoutingError

GREEDY = CacheParams("evostream", 32)
SAMPLED = CacheParams("evostream", 32, do_sample=True)


def unit(*head: float, dim: int = 8) -> list[float]:
    v = np.zeros(dim)
    v[: len(head)] = head
    return list(v / np.linalg.norm(v))


def test_an_exact_repeat_serves_whatever_its_whitespace() -> None:
    cache: ResponseCache[str] = ResponseCache(0.9, 60, 10, dim=8)
    assert cache.put("acme", "copy: a b", GREEDY, "a b", now=0.0)
    hit = cache.get("acme", "  copy:\ta   b\n", GREEDY, now=1.0)
    assert hit is not None and hit.value == "a b" and hit.exact and hit.similarity == 1.0
    assert exact_key("copy: a b", GREEDY) != exact_key("Copy: a b", GREEDY)  # case can change an answer


def test_tenants_parameters_and_sampling_keep_answers_apart() -> None:
    cache: ResponseCache[str] = ResponseCache(0.9, 60, 10, dim=8)
    cache.put("acme", "p", GREEDY, "x", now=0.0, embedding=unit(1.0))
    assert cache.get("other", "p", GREEDY, now=0.0) is None
    assert cache.similar("other", unit(1.0), GREEDY, now=0.0, prompt="p") is None
    assert cache.get("acme", "p", CacheParams("evostream", 64), now=0.0) is None
    assert cache.similar("acme", unit(1.0), CacheParams("evostream", 64), now=0.0, prompt="p") is None
    assert cache.get("acme", "p", SAMPLED, now=0.0) is None
    assert not cache.put("acme", "q", SAMPLED, "y", now=0.0)
    assert cache.size("acme") == 1


def test_a_near_prompt_serves_above_the_threshold_only() -> None:
    cache: ResponseCache[str] = ResponseCache(0.95, 60, 10, dim=8)
    cache.put("acme", "reverse: a b c", GREEDY, "c b a", now=0.0, embedding=unit(1.0, 0.0))
    cache.put("acme", "sort: c a b", GREEDY, "a b c", now=0.0, embedding=unit(0.0, 1.0))
    near = cache.similar("acme", unit(1.0, 0.2), GREEDY, now=1.0, prompt="reverse: a, b, c")  # cosine 0.98
    assert near is not None and near.value == "c b a" and not near.exact
    assert near.similarity == pytest.approx(1 / np.sqrt(1.04), abs=1e-6)
    assert cache.similar("acme", unit(1.0, 0.5), GREEDY, now=1.0, prompt="reverse: a, b, c") is None  # cosine 0.89


def test_answers_expire_after_the_ttl() -> None:
    cache: ResponseCache[str] = ResponseCache(0.9, 10, 10, dim=8)
    cache.put("acme", "p", GREEDY, "x", now=0.0, embedding=unit(1.0))
    assert cache.get("acme", "p", GREEDY, now=9.9) is not None
    assert cache.similar("acme", unit(1.0), GREEDY, now=10.0, prompt="p") is None
    assert cache.get("acme", "p", GREEDY, now=10.0) is None
    assert cache.size("acme") == 0


def test_a_tenant_keeps_its_newest_entries_and_reuses_their_rows() -> None:
    cache: ResponseCache[int] = ResponseCache(0.99, 60, 3, dim=8)
    for i in range(40):
        cache.put("acme", f"p{i}", GREEDY, i, now=float(i), embedding=unit(1.0, float(i)))
    assert cache.size("acme") == 3
    assert cache.get("acme", "p36", GREEDY, now=40.0) is None
    assert [cache.get("acme", f"p{i}", GREEDY, now=40.0).value for i in (37, 38, 39)] == [37, 38, 39]  # type: ignore[union-attr]
    old = cache.similar("acme", unit(1.0, 0.0), GREEDY, now=40.0, prompt="p0")
    assert old is None  # p0's row was given to a newer entry
    new = cache.similar("acme", unit(1.0, 39.0), GREEDY, now=40.0, prompt="p39")
    assert new is not None and new.value == 39


@pytest.mark.parametrize(("similarity", "ttl"), [(0.0, 60.0), (0.9, 0.0)])
def test_similarity_or_ttl_zero_turns_the_cache_off(similarity: float, ttl: float) -> None:
    cache: ResponseCache[str] = ResponseCache(similarity, ttl, 10, dim=8)
    assert not cache.on
    assert not cache.put("acme", "p", GREEDY, "x", now=0.0, embedding=unit(1.0))
    assert cache.get("acme", "p", GREEDY, now=0.0) is None


def test_only_a_tenant_with_entries_of_the_same_parameters_is_worth_an_embedding() -> None:
    cache: ResponseCache[str] = ResponseCache(0.9, 60, 1, dim=8)
    assert not cache.searchable("acme", GREEDY)
    cache.put("acme", "p", GREEDY, "x", now=0.0, embedding=unit(1.0))
    assert cache.searchable("acme", GREEDY)
    assert not cache.searchable("acme", CacheParams("evostream", 64)) and not cache.searchable("b", GREEDY)
    cache.put("acme", "q", CacheParams("evostream", 64), "y", now=0.0, embedding=unit(1.0))  # p goes (size 1)
    assert not cache.searchable("acme", GREEDY)


def test_similarity_one_keeps_exact_repeats_only() -> None:
    cache: ResponseCache[str] = ResponseCache(1.0, 60, 10, dim=8)
    assert cache.on and not cache.semantic
    cache.put("acme", "p", GREEDY, "x", now=0.0, embedding=unit(1.0))
    assert cache.get("acme", "p", GREEDY, now=0.0) is not None
    assert cache.similar("acme", unit(1.0), GREEDY, now=0.0, prompt="p") is None


@pytest.mark.parametrize(
    "other",
    ["date: 2020-01-03", "Date: 2020-01-02", "date: 2020-01-020", "date: 2020-10-02", "dates: 2020-01-02"],
)
def test_a_near_repeat_must_have_the_same_letters_and_digits(other: str) -> None:
    """MiniLM is uncased and barely sees digits: 'date: 2020-01-02' and '-03' have a cosine of 0.987. However close
    two embeddings, a prompt whose letters or digits (case kept) differ is another prompt, not a near repeat."""
    cache: ResponseCache[str] = ResponseCache(0.9, 60, 10, dim=8)
    cache.put("acme", "date: 2020-01-02", GREEDY, "2 January 2020", now=0.0, embedding=unit(1.0))
    assert cache.similar("acme", unit(1.0), GREEDY, now=1.0, prompt=other) is None
    for same in ("date 2020 01 02", "date: 2020/01/02.", "(date) 2020-01-02!"):
        hit = cache.similar("acme", unit(1.0), GREEDY, now=1.0, prompt=same)
        assert hit is not None and hit.value == "2 January 2020" and not hit.exact
    assert content("Date: 2020-01-02") == "Date20200102"


def test_a_near_repeat_is_looked_for_past_a_closer_prompt_with_other_digits() -> None:
    cache: ResponseCache[str] = ResponseCache(0.9, 60, 10, dim=8)
    cache.put("acme", "add: 1+2", GREEDY, "3", now=0.0, embedding=unit(1.0, 0.1))
    cache.put("acme", "add: 1+3", GREEDY, "4", now=0.0, embedding=unit(1.0, 0.0))
    hit = cache.similar("acme", unit(1.0, 0.0), GREEDY, now=1.0, prompt="add 1 + 2")  # closest: 1+3's
    assert hit is not None and hit.value == "3"


def test_by_default_the_cache_keeps_exact_repeats_only() -> None:
    from evostream.core.settings import Settings

    default = Settings.model_fields["cache_similarity"].default
    assert default == 1.0
    cache: ResponseCache[str] = ResponseCache(default, 60, 10, dim=8)
    assert cache.on and not cache.semantic


def test_a_wrong_embedding_size_is_refused() -> None:
    cache: ResponseCache[str] = ResponseCache(0.9, 60, 10, dim=8)
    with pytest.raises(RoutingError, match="8 dimensions"):
        cache.put("acme", "p", GREEDY, "x", now=0.0, embedding=[1.0, 0.0])
    with pytest.raises(RoutingError, match="similarity"):
        ResponseCache(1.5, 60, 10)
