"""The front door: what every request to a model (``/infer``, ``/v1/completions``, ``/v1/chat/completions``) passes
before it is published.

1. The tenant's rate limit and daily budget (``routing.budget``, from ``Settings.tenant_limits``): over one, the
   request is refused (429, ``Retry-After``) and the refusal is a RouteDecision (stage ADMISSION, chosen
   ``refused``) on evo.routes. A request let in holds an estimate against its tenant's budget (``estimate``: its
   prompt and ``max_new_tokens`` at the price table's highest prices) until its answers are charged.
2. The response cache (``routing.cache``): an exact repeat first; on an exact miss, when near repeats serve
   (``cache_similarity`` below 1), the prompt is embedded (the MiniLM encoder the inference service uses) and a near
   repeat looked for. A hit is answered at once: a new
   Completion (``cached``, ``cached_from`` the earlier trace, a new trace id, cost 0) goes on evo.completions and a
   RouteDecision (ADMISSION, chosen ``cache``, ``risk`` = the similarity) on evo.routes.
3. Else the request is published as before and its answer awaited; when it is a whole greedy answer it is kept by
   the cache.

Every Completion of a request let in is charged to its tenant's budget (its prompt and output tokens, its
``cost_usd``), an escalated partial included, whether or not its caller still waits: ``completed`` is called with
each Completion the API's live tail reads (and with the answer a caller gets, whichever comes first; each is charged
once). A rollout's SHADOW answer (its candidate's answer to a mirrored copy of the request) is not charged: the
tenant never gets it. A caller that timed out, hung up or dropped its stream is charged all the same.

The cache's answers are forgotten whenever a governance event comes (a promotion or a rollback changes the model
that answers); an answer whose request was looked up before the last such event is not kept (the generation read at
lookup is checked before storing), as it may come from the model that was replaced. Records are sent without
waiting for the broker's acknowledgement (a hit answers at once); a failed delivery is logged. The door's state is
in this process: budgets and the cache start empty when the API starts."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from evostream.api.errors import TooManyRequestsError
from evostream.core.clock import now_us
from evostream.core.errors import DeliveryError, EvoError
from evostream.core.settings import Settings
from evostream.routing.budget import Budgets, Estimate, LimitsTable, Refusal
from evostream.routing.cache import CacheParams, Hit, ResponseCache
from evostream.routing.prices import Price, PriceTable
from evostream.schemas.catalog import CATALOG, COMPLETIONS, ROUTES
from evostream.schemas.codec import RecordCodec

if TYPE_CHECKING:
    from evostream.core.bus.producer import EventProducer
    from evostream.producers.embedding import PromptEmbedder

log = logging.getLogger("evostream.api")
Record = dict[str, Any]
KEPT = ("STOP", "LENGTH")
"""The finish reasons of answers the cache keeps (not an error, not an escalated partial)."""
PARTIAL = "ESCALATED"
"""The finish reason of a self model's partial answer: not the request's last Completion."""
LOOKED_UP = 100_000
"""Requests whose cache generation is remembered until their answer comes (the oldest are forgotten first)."""


class RateLimitedError(TooManyRequestsError):
    """The tenant is over a rate limit or a daily budget (the limit is named; ``Retry-After`` says when to retry)."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.reason, retry_after_s=refusal.retry_after_header)
        self.refusal = refusal


@dataclass(frozen=True)
class Ask:
    """One request at the door: whose, what, how."""

    tenant: str
    prompt: str
    model: str
    """The model asked for (``evostream`` for /infer): part of the cache's key."""
    max_new_tokens: int
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    template: str | None = None
    """The governed prompt template the prompt is rendered into: part of the cache's key (every governance event
    empties the cache, so a template's production version never answers from an answer of the one before)."""

    @property
    def cache_params(self) -> CacheParams:
        model = self.model if self.template is None else f"{self.model} template={self.template}"
        return CacheParams(model, self.max_new_tokens, self.do_sample)


def load_limits(settings: Settings) -> Budgets | None:
    """The tenant limits of ``settings`` (None when unset); LimitsError naming the file when it is bad."""
    path = settings.tenant_limits
    if path is None:
        return None
    from evostream.routing.budget import LimitsError

    try:
        data = path.read_bytes()
    except OSError as e:
        raise LimitsError(f"cannot read the tenant limits {path}: {e.strerror or e}") from e
    return Budgets(LimitsTable.from_bytes(data, str(path)))


def highest_price(settings: Settings) -> Price:
    """The highest prompt and output prices of the price table (``settings.route_prices``; free when unset): what a
    request's estimate is priced at, whichever model answers it. LimitsError naming the file when it is bad."""
    path = settings.route_prices
    if path is None:
        return Price(0.0, 0.0)
    from evostream.routing.budget import LimitsError
    from evostream.routing.policy import RoutingError

    try:
        table = PriceTable.from_bytes(path.read_bytes())
    except OSError as e:
        raise LimitsError(f"cannot read the price table {path}: {e.strerror or e}") from e
    except RoutingError as e:
        raise LimitsError(f"{path}: {e}") from e
    prices = [p for _, p in table.entries]
    prompt = max((p.prompt_per_1k for p in prices), default=0.0)
    return Price(prompt, max((p.output_per_1k for p in prices), default=0.0))


def estimate(ask: Ask, price: Price) -> Estimate:
    """What ``ask`` may cost at most: its prompt (a token per character, and the end-of-sequence token: more than
    the tokenizer makes of words) and ``max_new_tokens``, at ``price``."""
    prompt = len(ask.prompt) + 1
    return Estimate(prompt + ask.max_new_tokens, price.cost(prompt, ask.max_new_tokens))


class FrontDoor:
    """The checks and the cache of one API; thread-safe (the tail's thread forgets the cache on governance news)."""

    def __init__(
        self,
        bootstrap: str,
        settings: Settings,
        embedder: Callable[[], PromptEmbedder] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.bootstrap = bootstrap
        self.settings = settings
        self.route = settings.route or "default"
        self.routes = bool(settings.route)
        """Whether the inference service routes requests (this API's ``route`` setting names one, or a routing
        decision of the service was seen): then a stream holds a request's text until its final answer."""
        self.budgets = load_limits(settings)
        self.price = highest_price(settings) if self.budgets is not None else Price(0.0, 0.0)
        self.cache: ResponseCache[Record] = ResponseCache(
            settings.cache_similarity, settings.cache_ttl_s, settings.cache_max_entries
        )
        self.clock = clock
        self._make_embedder = embedder or _minilm
        self._embedder: PromptEmbedder | None = None
        self._embedder_failed = False
        self._lock = threading.Lock()
        self._embed_lock = threading.Lock()
        self._producer: EventProducer | None = None
        self._routes = RecordCodec("RouteDecision")
        self._completions = RecordCodec("Completion")
        self._generation = 0
        """How many times the cache was forgotten: read at lookup, checked before an answer is stored."""
        self._looked: OrderedDict[str, int] = OrderedDict()
        """The generation each request in flight was looked up at, by request id."""

    # --- admission ----------------------------------------------------------------------------------------------
    def admit(self, ask: Ask, request_id: str) -> None:
        """Let the request in, or refuse it (RateLimitedError) with its refusal recorded on evo.routes."""
        if self.budgets is None:
            return
        with self._lock:
            refusal = self.budgets.admit(ask.tenant, self.clock(), request_id, estimate(ask, self.price))
        if refusal is None:
            return
        self._publish_route(
            request_id,
            ask.tenant,
            trace_id="",
            chosen="refused",
            chosen_version="",
            reason=f"{refusal.limit}: {refusal.reason}",
            candidates=[],
            risk=None,
            retry_after_s=refusal.retry_after_s,
        )
        raise RateLimitedError(refusal)

    # --- the cache ----------------------------------------------------------------------------------------------
    async def lookup(self, ask: Ask, request_id: str) -> tuple[Record | None, list[float] | None]:
        """A cached answer served (its Completion, published) or, on a miss, None and the prompt's embedding (None
        when none was made: the answer's own ``prompt_embedding``, the service's MiniLM, is kept then)."""
        if not self.cache.on or ask.do_sample:
            return None, None
        with self._lock:
            self._looked[request_id] = self._generation  # an answer is kept only if no forget() came since
            while len(self._looked) > LOOKED_UP:
                self._looked.popitem(last=False)
            hit = self.cache.get(ask.tenant, ask.prompt, ask.cache_params, time.monotonic())
            searchable = hit is None and self.cache.searchable(ask.tenant, ask.cache_params)
        embedding = None
        if searchable:  # a tenant with nothing to compare with is spared the embedding
            embedding = await self.embed(ask.prompt)
            if embedding is not None:
                with self._lock:
                    hit = self.cache.similar(ask.tenant, embedding, ask.cache_params, time.monotonic(), ask.prompt)
        if hit is None:
            return None, embedding
        with self._lock:
            self._looked.pop(request_id, None)
            if self.budgets is not None:
                self.budgets.release(request_id)  # answered without a model: nothing to charge
        return self._serve(ask, request_id, hit, embedding), None

    async def embed(self, prompt: str) -> list[float] | None:
        """The prompt's MiniLM embedding, computed off the event loop; None when the encoder cannot load (the cache
        then serves exact repeats only, and says so once in the log)."""
        if self._embedder_failed:
            return None
        try:
            return await asyncio.to_thread(self._embed, prompt)
        except EvoError as e:
            self._embedder_failed = True
            log.warning("the response cache serves exact repeats only: %s", e)
            return None

    def _embed(self, prompt: str) -> list[float]:
        with self._embed_lock:  # one load; the encoder is not shared by two threads at once
            if self._embedder is None:
                self._embedder = self._make_embedder()
            return self._embedder.embed([prompt])[0]

    def _serve(self, ask: Ask, request_id: str, hit: Hit[Record], embedding: list[float] | None) -> Record:
        started = time.perf_counter_ns()
        earlier = hit.value
        trace_id = uuid.uuid4().hex
        rec: Record = {
            "trace_id": trace_id,
            "request_id": request_id,
            "reply_to": request_id,
            "tenant": ask.tenant,
            "model_version": earlier["model_version"],
            "output_text": earlier["output_text"],
            "token_count": earlier["token_count"],
            "output_token_ids": list(earlier.get("output_token_ids") or []),
            "prompt_token_count": earlier.get("prompt_token_count", 0),
            "prompt_surprisal_bits": None,
            "prompt_embedding": [float(x) for x in embedding or earlier.get("prompt_embedding") or []],
            "finish_reason": earlier["finish_reason"],
            "error": None,
            "timings": {"queue_us": 0, "prefill_us": 0, "decode_us": 0, "total_us": 0},
            "completed_at_us": now_us(),
            "cached": True,
            "cached_from": earlier["trace_id"],
            "cost_usd": 0.0,
            "template_version": earlier.get("template_version"),
        }
        rec["timings"]["total_us"] = (time.perf_counter_ns() - started) // 1000
        how = (
            "an exact repeat"
            if hit.exact
            else f"a near repeat (cosine {hit.similarity:.4f} >= {self.cache.similarity:g})"
        )
        self._send(COMPLETIONS, trace_id, self._completions.encode(rec))
        self._publish_route(
            request_id,
            ask.tenant,
            trace_id=trace_id,
            chosen="cache",
            chosen_version=earlier["model_version"],
            reason=f"{how} of trace {earlier['trace_id']}",
            candidates=[
                {"target": "cache", "model_version": earlier["model_version"], "score": hit.similarity, "cost_usd": 0.0}
            ],
            risk=hit.similarity,
            retry_after_s=None,
        )
        return rec

    # --- the answer ---------------------------------------------------------------------------------------------
    def decided(self, rec: Record) -> None:
        """A RouteDecision read by the live tail: one of the service's (not the door's own) says it routes."""
        if rec.get("stage") != "ADMISSION":
            self.routes = True

    def completed(self, rec: Record) -> None:
        """Charge a Completion of a request this door let in to its tenant (once; an ESCALATED partial too; the
        final one gives the request's estimate back). Called on the live tail's thread with every Completion it
        reads, and with the answer a caller gets."""
        if self.budgets is None or rec.get("cached") or rec.get("role") == "SHADOW":
            return  # served from the cache, or a rollout's shadow answer (never returned): nothing charged
        tokens = int(rec.get("prompt_token_count") or 0) + int(rec.get("token_count") or 0)
        final = rec.get("finish_reason") != PARTIAL
        with self._lock:
            self.budgets.settle(
                str(rec.get("request_id")),
                str(rec.get("trace_id")),
                tokens,
                float(rec.get("cost_usd") or 0.0),
                final,
                self.clock(),
            )

    async def answered(self, ask: Ask, rec: Record, embedding: list[float] | None) -> None:
        """The answer a caller got: charged (if the live tail has not yet), and kept in the cache when it is a whole
        greedy answer of a request looked up since the last ``forget`` (with the prompt's embedding: the one made at
        the door, else the answer's own, else one made now)."""
        if rec.get("cached"):
            return
        self.completed(rec)
        with self._lock:
            looked = self._looked.pop(str(rec.get("request_id")), None)
        if rec.get("finish_reason") not in KEPT or rec.get("error") or not self.cache.on or ask.do_sample:
            return
        vector = embedding or list(rec.get("prompt_embedding") or []) or None
        if vector is None and self.cache.semantic:
            vector = await self.embed(ask.prompt)
        kept = {k: v for k, v in rec.items() if k != "prompt_embedding"}
        with self._lock:
            if looked is None or looked != self._generation:
                return  # the cache was forgotten while it was in flight: maybe the replaced model's answer
            self.cache.put(ask.tenant, ask.prompt, ask.cache_params, kept, time.monotonic(), vector)

    def forget(self) -> None:
        """Drop every cached answer (a governance event: the answering model may have changed); answers in flight
        are not kept when they come."""
        with self._lock:
            self._generation += 1
            self.cache.clear()

    # --- records ------------------------------------------------------------------------------------------------
    def _publish_route(
        self,
        request_id: str,
        tenant: str,
        *,
        trace_id: str,
        chosen: str,
        chosen_version: str,
        reason: str,
        candidates: list[dict[str, Any]],
        risk: float | None,
        retry_after_s: float | None,
    ) -> None:
        decision = {
            "decision_id": uuid.uuid4().hex,
            "request_id": request_id,
            "trace_id": trace_id,
            "tenant": tenant,
            "route": self.route,
            "stage": "ADMISSION",
            "candidates": candidates,
            "level": 0,
            "gate": self.cache.similarity if chosen == "cache" else 1.0,
            "chosen": chosen,
            "chosen_version": chosen_version,
            "reason": reason,
            "policy_version": "",
            "step": None,
            "risk": risk,
            "retry_after_s": retry_after_s,
            "decided_at_us": now_us(),
        }
        self._send(ROUTES, request_id, self._routes.encode(decision))

    def producer(self) -> EventProducer:
        with self._lock:
            if self._producer is None:
                from evostream.core.bus.admin import ensure_topics
                from evostream.core.bus.producer import EventProducer

                ensure_topics(self.bootstrap, [t for t in CATALOG if t.name in (ROUTES, COMPLETIONS)])
                self._producer = EventProducer(self.bootstrap, {"linger.ms": 1})
            return self._producer

    def _send(self, topic: str, key: str, value: bytes) -> None:
        producer = self.producer()

        def delivered(error: DeliveryError | None) -> None:
            if error is not None:
                log.warning("the front door's record on %s (key %s) was not delivered: %s", topic, key, error)

        producer.send(topic, key, value, on_delivery=delivered)
        producer.poll()

    def flush(self, timeout_s: float = 10.0) -> None:
        if self._producer is not None:
            self._producer.flush(timeout_s)

    def close(self) -> None:
        if self._producer is not None:
            try:
                self._producer.flush(10.0)
            except EvoError as e:
                log.warning("the front door's records: %s", e)


def _minilm() -> PromptEmbedder:
    from evostream.producers.embedding import PromptEmbedder

    return PromptEmbedder()
