"""How much one client may ask: a token bucket per client (a rate, with bursts) and a cap on its requests in flight.

A client is the actor whose key came, else the TCP peer's address (behind a proxy on this machine, every keyless
client is one: the proxy should keep its own quotas). Refusals are ``TooManyRequestsError`` (429) with the seconds
until a retry can succeed (``Retry-After``). The clients remembered are bounded: the longest unseen, with nothing in
flight, are forgotten first (a forgotten client starts again with a full bucket, which is what it would have had)."""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from fastapi import Request

from evostream.api.errors import TooManyRequestsError


def client_key(request: Request, actor: str | None) -> str:
    """Whom a quota counts: the actor, else the peer's address."""
    if actor is not None:
        return f"actor:{actor}"
    return f"peer:{request.client.host if request.client else '?'}"


@dataclass
class _Client:
    tokens: float
    at: float
    in_flight: int = 0


class ClientQuota:
    """``rate_per_s`` requests per second per client on average, ``burst`` at once from rest, and (``in_flight``)
    at most that many unfinished at once. Thread-safe; ``clock`` is for tests."""

    def __init__(
        self,
        what: str,
        rate_per_s: float,
        burst: int,
        in_flight: int | None = None,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_s <= 0 or burst < 1 or (in_flight is not None and in_flight < 1):
            raise ValueError("a quota needs a positive rate, burst and in-flight cap")
        self.what = what
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.in_flight = in_flight
        self.max_clients = max_clients
        self.clock = clock
        self._lock = threading.Lock()
        self._clients: OrderedDict[str, _Client] = OrderedDict()

    def _client(self, key: str, now: float) -> _Client:
        c = self._clients.get(key)
        if c is None:
            c = self._clients[key] = _Client(float(self.burst), now)
            self._forget_some()
        else:
            c.tokens = min(float(self.burst), c.tokens + (now - c.at) * self.rate_per_s)
            c.at = now
        self._clients.move_to_end(key)
        return c

    def _forget_some(self) -> None:
        for key in list(self._clients)[: max(0, len(self._clients) - self.max_clients)]:
            if self._clients[key].in_flight == 0:
                del self._clients[key]

    def take(self, key: str) -> None:
        """Count one request of ``key``; TooManyRequestsError when over its rate (or its in-flight cap)."""
        with self._lock:
            c = self._client(key, self.clock())
            if self.in_flight is not None and c.in_flight >= self.in_flight:
                raise TooManyRequestsError(
                    f"{c.in_flight} {self.what} of this client are in flight already (at most {self.in_flight}); "
                    "retry once one has answered",
                    retry_after_s=1,
                )
            if c.tokens < 1.0:
                wait = math.ceil((1.0 - c.tokens) / self.rate_per_s)
                raise TooManyRequestsError(
                    f"over {self.rate_per_s:g} {self.what} per second for this client; retry in {wait} s",
                    retry_after_s=wait,
                )
            c.tokens -= 1.0
            if self.in_flight is not None:
                c.in_flight += 1

    def done(self, key: str) -> None:
        """One of ``key``'s requests in flight finished (only with an in-flight cap)."""
        with self._lock:
            c = self._clients.get(key)
            if c is not None and c.in_flight > 0:
                c.in_flight -= 1

    @contextmanager
    def holding(self, key: str) -> Iterator[None]:
        """``take`` for the block, and ``done`` after it, however it ends."""
        self.take(key)
        try:
            yield
        finally:
            self.done(key)

    def waiting(self, key: str) -> int:
        """``key``'s requests in flight now."""
        with self._lock:
            c = self._clients.get(key)
            return 0 if c is None else c.in_flight
