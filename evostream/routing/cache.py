"""The response cache of the API's front door: per tenant, an earlier answer to the same (or a near enough) greedy
request serves again, without a model.

A lookup tries the exact repeat first (the normalised prompt and the generation parameters, hashed: one dict read),
and only then the prompt embedding: cosine similarity against every live entry of the tenant with the same
parameters (one matrix-vector product over a numpy matrix per tenant; the embeddings are L2-normalised, so the dot
product is the cosine). A near repeat must also have the same letters and digits, in order and case-sensitive, as
the earlier prompt (``content``): only its spacing, punctuation and symbols may differ. MiniLM is uncased and barely
sees digits ('date: 2020-01-02' and '-03' have a cosine of 0.987, 'reverse: abc' and 'reverse: Abc' of 1.0), so a
cosine alone would serve one prompt's answer to another. Only greedy requests are served or kept: a sampled answer
is one draw, not the answer.
An entry lives ``ttl_s`` seconds; a tenant keeps at most ``max_entries`` (the oldest go first). A similarity of 0
or a TTL of 0 turns the cache off; a similarity of 1 (the default) keeps only exact repeats (nothing is embedded then).

Pure: the caller passes the time, and decides what an answer is (``V``); no I/O, no lock (the API calls it from
its event loop only)."""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

from evostream.routing.policy import RoutingError

V = TypeVar("V")
Vector = npt.NDArray[np.float32]


@dataclass(frozen=True)
class CacheParams:
    """What besides the prompt decides an answer: the model asked for and the generation parameters."""

    model: str
    max_new_tokens: int
    do_sample: bool = False

    @property
    def greedy(self) -> bool:
        return not self.do_sample


def normalise(prompt: str) -> str:
    """The prompt as the cache compares it: Unicode NFC, runs of whitespace as one space, no outer whitespace (case
    is kept: it can change an answer)."""
    return " ".join(unicodedata.normalize("NFC", prompt).split())


def content(prompt: str) -> str:
    """What a near repeat must share with its earlier prompt: the normalised prompt's letters and digits, in order,
    case kept (Unicode letters and digits included)."""
    return "".join(ch for ch in normalise(prompt) if ch.isalnum())


def exact_key(prompt: str, params: CacheParams) -> str:
    """The exact-repeat key: SHA-256 of the normalised prompt and the parameters."""
    doc = json.dumps([normalise(prompt), params.model, params.max_new_tokens, params.do_sample], ensure_ascii=False)
    return hashlib.sha256(doc.encode()).hexdigest()


@dataclass(frozen=True)
class Hit(Generic[V]):
    """A cached answer that serves: how similar its prompt was (1.0 for an exact repeat)."""

    value: V
    similarity: float
    exact: bool


@dataclass
class _Entry(Generic[V]):
    value: V
    params_key: str
    stored_at: float
    row: int | None
    """Its row in the tenant's embedding matrix (None: stored without an embedding, served only exactly)."""
    content: str = ""
    """The prompt's letters and digits (``content``): a near repeat must have the same."""


class _Tenant(Generic[V]):
    """One tenant's entries: a dict by exact key (oldest first) and a matrix of their embeddings, row per entry."""

    def __init__(self, dim: int) -> None:
        self.entries: OrderedDict[str, _Entry[V]] = OrderedDict()
        self.matrix: Vector = np.zeros((0, dim), dtype=np.float32)
        self.live = np.zeros(0, dtype=bool)
        self.params = np.zeros(0, dtype=np.int32)
        """Each row's parameters, as a code of ``codes``."""
        self.codes: dict[str, int] = {}
        self.keys: list[str] = []
        self.free: list[int] = []

    def add_row(self, key: str, params_key: str, embedding: Vector) -> int:
        if self.free:
            row = self.free.pop()
        else:
            row = len(self.keys)
            if row >= self.matrix.shape[0]:  # grow by doubling: a put is O(1) amortised
                grown = max(16, 2 * self.matrix.shape[0])
                matrix = np.zeros((grown, self.matrix.shape[1]), dtype=np.float32)
                matrix[:row] = self.matrix[:row]
                live = np.zeros(grown, dtype=bool)
                live[:row] = self.live[:row]
                params = np.zeros(grown, dtype=np.int32)
                params[:row] = self.params[:row]
                self.matrix, self.live, self.params = matrix, live, params
            self.keys.append("")
        self.matrix[row] = embedding
        self.live[row] = True
        self.params[row] = self.code(params_key)
        self.keys[row] = key
        return row

    def code(self, params_key: str) -> int:
        return self.codes.setdefault(params_key, len(self.codes))

    def drop(self, key: str) -> None:
        entry = self.entries.pop(key, None)
        if entry is not None and entry.row is not None:
            self.live[entry.row] = False
            self.free.append(entry.row)


class ResponseCache(Generic[V]):
    """Answers by tenant: ``get`` an exact repeat, ``similar`` by embedding, ``put`` a new answer."""

    def __init__(self, similarity: float, ttl_s: float, max_entries: int, dim: int = 384) -> None:
        if not 0.0 <= similarity <= 1.0:
            raise RoutingError(f"the cache similarity is a cosine in [0, 1], got {similarity}")
        if ttl_s < 0 or max_entries < 0:
            raise RoutingError("the cache's TTL and size are not negative")
        self.similarity = similarity
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.dim = dim
        self._tenants: dict[str, _Tenant[V]] = {}

    @property
    def on(self) -> bool:
        return self.similarity > 0 and self.ttl_s > 0 and self.max_entries > 0

    @property
    def semantic(self) -> bool:
        """Whether near repeats serve too (an embedding is needed then); off at similarity 1: exact repeats only."""
        return self.on and self.similarity < 1.0

    def get(self, tenant: str, prompt: str, params: CacheParams, now: float) -> Hit[V] | None:
        """The answer to an exact repeat of ``prompt`` with ``params`` (normalised), if one is kept and fresh."""
        if not self.on or not params.greedy:
            return None
        t = self._tenants.get(tenant)
        if t is None:
            return None
        key = exact_key(prompt, params)
        entry = t.entries.get(key)
        if entry is None:
            return None
        if now - entry.stored_at >= self.ttl_s:
            t.drop(key)
            return None
        return Hit(entry.value, 1.0, True)

    def searchable(self, tenant: str, params: CacheParams) -> bool:
        """Whether ``similar`` could find anything for ``tenant`` and ``params`` (an embedding is worth making)."""
        if not self.semantic or not params.greedy:
            return False
        t = self._tenants.get(tenant)
        code = None if t is None else t.codes.get(_params_key(params))
        return t is not None and code is not None and bool(np.any(t.live & (t.params == code)))

    def similar(
        self, tenant: str, embedding: Sequence[float], params: CacheParams, now: float, prompt: str
    ) -> Hit[V] | None:
        """The fresh answer whose prompt embedding is the most similar to ``embedding`` (``prompt``'s) among the
        tenant's with the same ``params`` and the same letters and digits as ``prompt``, if that similarity reaches
        the threshold."""
        if not self.semantic or not params.greedy:
            return None
        t = self._tenants.get(tenant)
        if t is None or not t.keys:
            return None
        e = self._vector(embedding)
        n = len(t.keys)
        sims = t.matrix[:n] @ e
        code = t.codes.get(_params_key(params))
        if code is None:
            return None
        same = t.live[:n] & (t.params[:n] == code)
        sims = np.where(same, sims, -np.inf)
        wanted = content(prompt)
        while True:
            row = int(np.argmax(sims))
            best = float(sims[row])
            if not best >= self.similarity:  # -inf and NaN included
                return None
            entry = t.entries[t.keys[row]]
            if now - entry.stored_at >= self.ttl_s:
                t.drop(t.keys[row])  # expired: forget it, look at the next best
            elif entry.content == wanted:
                return Hit(entry.value, min(1.0, best), False)
            sims[row] = -np.inf  # another prompt, however close its embedding: look at the next best

    def put(
        self,
        tenant: str,
        prompt: str,
        params: CacheParams,
        value: V,
        now: float,
        embedding: Sequence[float] | None = None,
    ) -> bool:
        """Keep ``value`` as the answer to ``prompt`` (and, with ``embedding``, to near repeats); False when not
        kept (the cache is off, or the request was not greedy). A tenant over its size loses its oldest entries."""
        if not self.on or not params.greedy:
            return False
        t = self._tenants.get(tenant)
        if t is None:
            t = self._tenants[tenant] = _Tenant(self.dim)
        key = exact_key(prompt, params)
        t.drop(key)
        pkey = _params_key(params)
        row = None
        if embedding is not None and len(embedding) and self.semantic:
            row = t.add_row(key, pkey, self._vector(embedding))
        t.entries[key] = _Entry(value, pkey, now, row, content(prompt))
        while len(t.entries) > self.max_entries:
            t.drop(next(iter(t.entries)))
        return True

    def clear(self) -> None:
        """Forget every answer (the model that answers changed)."""
        self._tenants.clear()

    def size(self, tenant: str) -> int:
        t = self._tenants.get(tenant)
        return 0 if t is None else len(t.entries)

    def _vector(self, embedding: Sequence[float]) -> Vector:
        v = np.asarray(embedding, dtype=np.float32)
        if v.shape != (self.dim,):
            raise RoutingError(f"a prompt embedding has {self.dim} dimensions, got {v.shape}")
        norm = float(np.linalg.norm(v))
        return v / norm if norm > 0 else v


def _params_key(params: CacheParams) -> str:
    return f"{params.model}\x00{params.max_new_tokens}\x00{params.do_sample}"
