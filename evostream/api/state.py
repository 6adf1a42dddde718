"""What one app holds while it runs: the live fold and its tail, the governance view and its cached registry, the
key checks, the token decoder, the request client, the evolution jobs. Routes reach it through ``deps.State``."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from evostream.api.auth import Auth, RegistryCache
from evostream.api.config import ApiConfig
from evostream.api.jobs import EvolveJobs
from evostream.core.bus.admin import cluster_metadata, ensure_topics
from evostream.schemas.catalog import CATALOG
from evostream.views.governance import GovernanceView
from evostream.views.recent import Recent
from evostream.views.tail import WATCHED, Tail
from evostream.views.token_text import TokenDecoder, local_resolver

if TYPE_CHECKING:
    from evostream.producers.client import InferenceClient

T = TypeVar("T")


class ApiState:
    """The app's parts; ``tail=False`` makes an API without live views (no broker reads at start, no streams)."""

    def __init__(self, cfg: ApiConfig, tail: bool = True) -> None:
        self.cfg = cfg
        self.recent = Recent()
        self.governance = GovernanceView(cfg.bootstrap, cfg.settings)
        self.registry = RegistryCache(self.governance)
        self.auth = Auth(self.registry, cfg.open_reads)
        self.tokens = TokenDecoder(local_resolver(cfg.settings.artifacts_dir, self.registry.get))
        self.jobs = EvolveJobs(cfg, self.registry)
        self.streams = 0
        """Event streams open now (the cap counts these, not the API's own subscribers)."""
        self.write_lock = threading.Lock()
        """One governance write at a time from this API (each is a transaction of the log's one writer id)."""
        self.tail: Tail | None = None
        self.watching_governance = False
        if tail:
            # the topics read are created if missing (an API may start before any service); the governance log's
            # topic exists once `governance init` ran: until then its events are not followed (health says so)
            ensure_topics(cfg.bootstrap, [t for t in CATALOG if t.name in WATCHED])
            gov = cfg.settings.governance_topic
            self.watching_governance = gov in cluster_metadata(cfg.bootstrap, 10.0).topics
            topics = (*WATCHED, gov) if self.watching_governance else WATCHED
            self.tail = Tail(cfg.bootstrap, self.recent, topics, cfg.history_s, schemas={gov: "GovernanceEvent"})
            self.tail.subscribe(lambda topic, _rec: self.registry.invalidate() if topic == gov else None)
        self._client: InferenceClient | None = None
        self._client_lock = threading.Lock()

    def client(self) -> InferenceClient:
        """The one request client (made on first use; two first requests at once make one)."""
        with self._client_lock:
            if self._client is None:
                from evostream.producers.client import InferenceClient

                self._client = InferenceClient(self.cfg.bootstrap, tenant="http")
            return self._client

    def read(self, fn: Callable[[Recent], T]) -> T:
        """``fn`` of the live fold, under the tail's lock (the tail adds to it on its own thread)."""
        if self.tail is None:
            return fn(self.recent)
        with self.tail.lock:
            return fn(self.recent)

    def close(self) -> None:
        if self.tail is not None:
            self.tail.close()
        if self._client is not None:
            self._client.close()
