"""What one app holds while it runs: the live fold and its tail, the governance view and its cached registry, the
key checks, the token decoder, the request client, the evolution jobs. Routes reach it through ``deps.State``."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from evostream.api.auth import Auth, RegistryCache
from evostream.api.config import ApiConfig
from evostream.api.door import FrontDoor
from evostream.api.jobs import EvolveJobs
from evostream.api.quota import ClientQuota
from evostream.core.bus.admin import cluster_metadata, ensure_topics
from evostream.core.errors import EvoError
from evostream.schemas.catalog import CATALOG, COMPLETIONS, ROUTES
from evostream.views.governance import GovernanceView
from evostream.views.recent import Recent
from evostream.views.tail import WATCHED, Tail
from evostream.views.token_text import TokenDecoder, local_resolver

if TYPE_CHECKING:
    from evostream.producers.client import InferenceClient

T = TypeVar("T")
log = logging.getLogger("evostream.api")
GOVERNANCE_POLL_S = 2.0
"""How often an API started before the governance log's topic existed looks for it."""
INFER_SLOTS = 1024
"""``/infer`` requests in flight at once, all clients together."""


class ApiState:
    """The app's parts; ``tail=False`` makes an API without live views (no broker reads at start, no streams)."""

    def __init__(self, cfg: ApiConfig, tail: bool = True) -> None:
        self.cfg = cfg
        self.recent = Recent()
        self.governance = GovernanceView(cfg.bootstrap, cfg.settings, cached=True)
        self.registry = RegistryCache(self.governance)
        self.auth = Auth(self.registry, cfg.open_reads, cfg.trust_loopback)
        self.tokens = TokenDecoder(local_resolver(cfg.settings.artifacts_dir, self.registry.get))
        self.jobs = EvolveJobs(cfg, self.registry)
        self.infer_quota = ClientQuota("/infer requests", cfg.infer_per_s, cfg.infer_in_flight, cfg.infer_in_flight)
        """Per client: ``/infer`` requests per second and in flight (429 over either)."""
        self.governance_quota = ClientQuota("reads of the governance log", cfg.governance_reads_per_s, 20)
        """Per client: ``/registry``, ``/governance/audit`` and ``/provenance`` reads per second (429 over it)."""
        self.infer_slots = asyncio.Semaphore(INFER_SLOTS)
        """``/infer`` requests published and unanswered, all clients together: as many as the request client's
        slots, so its own wait for a slot (a poll) never runs; the wait is here, on the event loop, without a poll."""
        self.streams = 0
        """Event streams open now (the cap counts these, not the API's own subscribers)."""
        self.write_lock = threading.Lock()
        """One governance write at a time from this API (each is a transaction of the log's one writer id)."""
        self.door = FrontDoor(cfg.bootstrap, cfg.settings)
        """Rate limits, budgets and the response cache of ``/infer`` and ``/v1/*``."""
        self.tail: Tail | None = None
        self.watching_governance = False
        self._governance_tail: Tail | None = None
        self._stop = threading.Event()
        self._waiter: threading.Thread | None = None
        if tail:
            # the topics read are created if missing (an API may start before any service); the governance log's
            # topic exists once `governance init` ran: until then a thread looks for it, and follows it once it is
            # there (health says whether it is followed)
            ensure_topics(cfg.bootstrap, [t for t in CATALOG if t.name in WATCHED])
            gov = cfg.settings.governance_topic
            self.watching_governance = gov in cluster_metadata(cfg.bootstrap, 10.0).topics
            topics = (*WATCHED, gov) if self.watching_governance else WATCHED
            self.tail = Tail(cfg.bootstrap, self.recent, topics, cfg.history_s, schemas={gov: "GovernanceEvent"})
            self.tail.subscribe(self._governance_news)
            self.tail.subscribe(self._door_news)
            if not self.watching_governance:
                self._waiter = threading.Thread(target=self._await_governance, name="evostream-gov-wait", daemon=True)
                self._waiter.start()
            self.door.producer()  # connected now, not on a first refusal or cache hit (on the event loop)
        self._client: InferenceClient | None = None
        self._client_lock = threading.Lock()

    def _door_news(self, topic: str, rec: dict[str, Any]) -> None:
        if topic == COMPLETIONS:
            self.door.completed(rec)
        elif topic == ROUTES:
            self.door.decided(rec)

    def _governance_news(self, topic: str, _rec: object) -> None:
        if topic == self.cfg.settings.governance_topic:
            self.registry.invalidate()
            self.door.forget()

    def _await_governance(self) -> None:
        """Until the governance log's topic exists (``governance init``), look for it every ``GOVERNANCE_POLL_S``;
        then follow it with a tail of its own (from as far back as the live tail reads: its first events too)."""
        gov = self.cfg.settings.governance_topic
        while not self._stop.wait(GOVERNANCE_POLL_S):
            try:
                if gov not in cluster_metadata(self.cfg.bootstrap, 5.0).topics:
                    continue
                follower = Tail(
                    self.cfg.bootstrap, Recent(), (gov,), self.cfg.history_s, schemas={gov: "GovernanceEvent"}
                )
            except EvoError as e:  # the broker away a moment: look again
                log.warning("looking for the governance log's topic %s: %s", gov, e)
                continue
            follower.subscribe(self._governance_news)
            self._governance_tail = follower
            self.watching_governance = True
            self._governance_news(gov, None)  # whatever was cached before the log existed
            return

    def client(self) -> InferenceClient:
        """The one request client (made on first use; two first requests at once make one)."""
        with self._client_lock:
            if self._client is None:
                from evostream.producers.client import InferenceClient

                self._client = InferenceClient(self.cfg.bootstrap, tenant="http", max_in_flight=INFER_SLOTS)
            return self._client

    def read(self, fn: Callable[[Recent], T]) -> T:
        """``fn`` of the live fold, under the tail's lock (the tail adds to it on its own thread)."""
        if self.tail is None:
            return fn(self.recent)
        with self.tail.lock:
            return fn(self.recent)

    def close(self) -> None:
        self._stop.set()
        if self._waiter is not None:
            self._waiter.join(10)
        if self._governance_tail is not None:
            self._governance_tail.close()
        self.door.close()
        if self.governance.cache is not None:
            self.governance.cache.close()
        if self.tail is not None:
            self.tail.close()
        if self._client is not None:
            self._client.close()
