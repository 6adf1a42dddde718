"""Per-tenant daily budgets and rate limits, the API's front door checks them before a request is published.

The limits come from configuration (``Settings.tenant_limits``, a JSON file)::

    {"acme": {"tokens_per_day": 200000, "cost_per_day_usd": 5.0, "requests_per_s": 2, "burst": 10},
     "*":    {"requests_per_s": 1, "burst": 5}}

A tenant named in the file has its own row; every other tenant has the ``*`` row's limits (each its own bucket and
its own budget: ``*`` is a default, not a pool); without a ``*`` row an unnamed tenant has no limits. Every field is
optional (absent: that limit is off). A day is a UTC day: the budget's counts start again at 00:00 UTC.

- Rate: a token bucket per tenant, ``requests_per_s`` on average and ``burst`` at once from rest (``burst``
  defaults to ``max(1, ceil(requests_per_s))``).
- Budget: the tokens (prompt and output) and the cost (``Completion.cost_usd``) of the tenant's answers today.
  A request is let in with an ``Estimate`` of what it may cost (its prompt and ``max_new_tokens``, at the highest
  price), which is held against the budget while it is in flight (``admit`` with a ``request_id``): a request is
  let in only when its estimate fits in what is left of the day's budget after what was charged and what requests
  in flight hold, so requests admitted together cannot go over it by more than their estimates are short (an
  escalated request's self-model partial is the one known case). ``settle`` charges each of the request's answers
  (its Completions, an escalated partial included, each once) as it comes, whether or not its caller still waits,
  and gives the hold back with the final one; a hold not settled within ``hold_s`` is given back uncharged (an
  answer that comes later is still charged). So that a budget smaller than one request still serves, a request is
  let in whatever its estimate when nothing is charged or held today.

A refusal names the limit and the seconds until the tenant can be let in again: the bucket's refill for the rate,
the next UTC midnight for a budget, a second when only the holds of requests in flight keep the estimate out
(``Retry-After``). Pure: the caller passes the time (seconds since the epoch)."""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from evostream.routing.policy import RoutingError

DAY_S = 86_400.0
FIELDS = ("tokens_per_day", "cost_per_day_usd", "requests_per_s", "burst")
Limit = Literal["requests_per_s", "tokens_per_day", "cost_per_day_usd"]


class LimitsError(RoutingError):
    """The tenant limits file is not what it must be (its path and the reason are said)."""


@dataclass(frozen=True)
class TenantLimits:
    """One tenant's limits; None: that limit is off."""

    tokens_per_day: int | None = None
    cost_per_day_usd: float | None = None
    requests_per_s: float | None = None
    burst: int | None = None

    @property
    def bucket_size(self) -> float:
        if self.requests_per_s is None:
            return math.inf
        return float(self.burst if self.burst is not None else max(1, math.ceil(self.requests_per_s)))

    @classmethod
    def from_json(cls, name: str, row: Any) -> TenantLimits:
        if not isinstance(row, dict):
            raise LimitsError(f"tenant {name!r}: expected an object of {', '.join(FIELDS)}, got {row!r}")
        unknown = sorted(set(row) - set(FIELDS))
        if unknown:
            raise LimitsError(f"tenant {name!r}: unknown field(s) {', '.join(unknown)} (known: {', '.join(FIELDS)})")
        tokens = _number(name, row, "tokens_per_day", integer=True)
        cost = _number(name, row, "cost_per_day_usd")
        rate = _number(name, row, "requests_per_s")
        burst = _number(name, row, "burst", integer=True)
        if rate is not None and rate <= 0:
            raise LimitsError(f"tenant {name!r}: requests_per_s is positive (leave it out for no rate limit)")
        if burst is not None and burst < 1:
            raise LimitsError(f"tenant {name!r}: burst is at least 1")
        if burst is not None and rate is None:
            raise LimitsError(f"tenant {name!r}: burst needs requests_per_s")
        return cls(None if tokens is None else int(tokens), cost, rate, None if burst is None else int(burst))


def _number(name: str, row: Mapping[str, Any], field: str, integer: bool = False) -> float | None:
    value = row.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise LimitsError(f"tenant {name!r}: {field} is a finite number >= 0, got {value!r}")
    if integer and value != int(value):
        raise LimitsError(f"tenant {name!r}: {field} is a whole number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class LimitsTable:
    """The limits by tenant, ``*`` for every tenant not named."""

    tenants: Mapping[str, TenantLimits]

    def of(self, tenant: str) -> TenantLimits | None:
        return self.tenants.get(tenant, self.tenants.get("*"))

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "the tenant limits") -> LimitsTable:
        try:
            parsed = json.loads(data)
        except ValueError as e:
            raise LimitsError(f"{source} is not JSON: {e}") from e
        if not isinstance(parsed, dict):
            raise LimitsError(f"{source}: expected a JSON object of tenant (or '*') -> limits")
        try:
            return cls({str(k): TenantLimits.from_json(str(k), v) for k, v in parsed.items()})
        except LimitsError as e:
            raise LimitsError(f"{source}: {e}") from None


@dataclass(frozen=True)
class Refusal:
    """Why a tenant's request is not let in, and when one could be."""

    tenant: str
    limit: Limit
    retry_after_s: float
    reason: str

    @property
    def retry_after_header(self) -> int:
        """``Retry-After`` in whole seconds (at least 1)."""
        return max(1, math.ceil(self.retry_after_s))


@dataclass(frozen=True)
class Estimate:
    """What a request may cost at most: held against its tenant's budget while it is in flight."""

    tokens: int = 0
    cost_usd: float = 0.0


NOTHING = Estimate()
HOLD_S = 600.0
"""How long a request's estimate is held when no answer settles it (its service down, its request lost)."""


@dataclass
class _Usage:
    day: int
    tokens: int = 0
    cost_usd: float = 0.0
    bucket: float = 0.0
    at: float = 0.0
    held_tokens: int = 0
    """The estimates of this tenant's requests in flight (any day's: they are in flight now)."""
    held_cost_usd: float = 0.0


@dataclass
class _Hold:
    """One admitted request: its tenant, its estimate (while ``open``), the answers (trace ids) charged."""

    tenant: str
    estimate: Estimate
    at: float
    open: bool = True
    charged: set[str] = field(default_factory=set)


class Budgets:
    """Rate limits and daily budgets of every tenant: ``admit`` before a request (holding its estimate), ``settle``
    with each of its answers. Remembers at most ``max_tenants`` tenants (the longest unseen are forgotten first) and
    the last ``max_requests`` requests."""

    def __init__(
        self, table: LimitsTable, max_tenants: int = 100_000, max_requests: int = 100_000, hold_s: float = HOLD_S
    ) -> None:
        self.table = table
        self.max_tenants = max_tenants
        self.max_requests = max_requests
        self.hold_s = hold_s
        self._usage: OrderedDict[str, _Usage] = OrderedDict()
        self._holds: OrderedDict[str, _Hold] = OrderedDict()
        """By request id, oldest first; kept after the final answer (a partial may come after it) until pushed out."""
        self._open: OrderedDict[str, float] = OrderedDict()
        """The request ids whose estimate is held, oldest first, with when they were let in."""

    def _usage_of(self, tenant: str, limits: TenantLimits, now: float) -> _Usage:
        day = int(now // DAY_S)
        u = self._usage.get(tenant)
        if u is None:
            u = self._usage[tenant] = _Usage(day, bucket=limits.bucket_size, at=now)
            while len(self._usage) > self.max_tenants:
                self._usage.popitem(last=False)
        if u.day != day:
            u.day, u.tokens, u.cost_usd = day, 0, 0.0
        if limits.requests_per_s is not None:
            u.bucket = min(limits.bucket_size, u.bucket + max(0.0, now - u.at) * limits.requests_per_s)
        u.at = now
        self._usage.move_to_end(tenant)
        return u

    def admit(
        self, tenant: str, now: float, request_id: str | None = None, estimate: Estimate = NOTHING
    ) -> Refusal | None:
        """Let one request of ``tenant`` in (taking a token of its bucket, and holding ``estimate`` against its
        budget under ``request_id``), or say why not. The budget is checked first: a request refused for its budget
        takes nothing from the bucket."""
        self._expire(now)
        limits = self.table.of(tenant)
        if limits is None:
            return None
        u = self._usage_of(tenant, limits, now)
        midnight = (u.day + 1) * DAY_S - now
        if limits.tokens_per_day is not None:
            over = _over(u.tokens, u.held_tokens, estimate.tokens, limits.tokens_per_day)
            if over is not None:
                wait = 1.0 if over == "held" else midnight
                return Refusal(
                    tenant,
                    "tokens_per_day",
                    wait,
                    f"tenant {tenant!r} used {u.tokens:,} of its {limits.tokens_per_day:,} tokens today (UTC), "
                    f"{u.held_tokens:,} more are held by its requests in flight, and this request may take "
                    f"{estimate.tokens:,}",
                )
        if limits.cost_per_day_usd is not None:
            over = _over(u.cost_usd, u.held_cost_usd, estimate.cost_usd, limits.cost_per_day_usd)
            if over is not None:
                wait = 1.0 if over == "held" else midnight
                return Refusal(
                    tenant,
                    "cost_per_day_usd",
                    wait,
                    f"tenant {tenant!r} spent ${u.cost_usd:.6g} of its ${limits.cost_per_day_usd:g} today (UTC), "
                    f"${u.held_cost_usd:.6g} more is held by its requests in flight, and this request may cost "
                    f"${estimate.cost_usd:.6g}",
                )
        if limits.requests_per_s is not None:
            if u.bucket < 1.0:
                wait = (1.0 - u.bucket) / limits.requests_per_s
                return Refusal(
                    tenant,
                    "requests_per_s",
                    wait,
                    f"tenant {tenant!r} is over {limits.requests_per_s:g} requests per second "
                    f"(bursts of {limits.bucket_size:g})",
                )
            u.bucket -= 1.0
        if request_id is not None and (limits.tokens_per_day is not None or limits.cost_per_day_usd is not None):
            u.held_tokens += max(0, estimate.tokens)
            u.held_cost_usd += max(0.0, estimate.cost_usd)
            earlier = self._holds.pop(request_id, None)
            if earlier is not None:
                self._give_back(request_id, earlier)
            self._holds[request_id] = _Hold(tenant, estimate, now)
            self._open[request_id] = now
            while len(self._holds) > self.max_requests:
                rid, pushed = self._holds.popitem(last=False)
                self._give_back(rid, pushed)
        return None

    def holds(self, request_id: str) -> bool:
        """Whether ``request_id`` was let in with a hold that is still open."""
        h = self._holds.get(request_id)
        return h is not None and h.open

    def settle(self, request_id: str, trace_id: str, tokens: int, cost_usd: float, final: bool, now: float) -> bool:
        """Charge one answer (``trace_id``) of an admitted request, once, to its tenant; ``final``: the request's
        last answer, its estimate is given back. False when the request is not one this object let in (or was
        pushed out)."""
        h = self._holds.get(request_id)
        if h is None:
            return False
        if trace_id not in h.charged:
            h.charged.add(trace_id)
            self.charge(h.tenant, tokens, cost_usd, now)
        if final:
            self._give_back(request_id, h)
        return True

    def release(self, request_id: str) -> None:
        """Give ``request_id``'s estimate back uncharged (it was answered without a model: a cache hit)."""
        h = self._holds.get(request_id)
        if h is not None:
            self._give_back(request_id, h)

    def _give_back(self, request_id: str, h: _Hold) -> None:
        if not h.open:
            return
        h.open = False
        self._open.pop(request_id, None)
        u = self._usage.get(h.tenant)
        if u is not None:
            u.held_tokens = max(0, u.held_tokens - max(0, h.estimate.tokens))
            u.held_cost_usd = max(0.0, u.held_cost_usd - max(0.0, h.estimate.cost_usd))

    def _expire(self, now: float) -> None:
        while self._open:
            rid, at = next(iter(self._open.items()))  # the oldest open hold: the others are younger
            if now - at < self.hold_s:
                break
            self._give_back(rid, self._holds[rid])

    def charge(self, tenant: str, tokens: int, cost_usd: float, now: float) -> None:
        """Count an answer of ``tenant`` (its prompt and output tokens, its cost) against today's budget."""
        limits = self.table.of(tenant)
        if limits is None:
            return
        u = self._usage_of(tenant, limits, now)
        u.tokens += max(0, tokens)
        u.cost_usd += max(0.0, cost_usd) if math.isfinite(cost_usd) else 0.0

    def used(self, tenant: str, now: float) -> tuple[int, float]:
        """The tokens and cost of ``tenant``'s answers today."""
        u = self._usage.get(tenant)
        if u is None or u.day != int(now // DAY_S):
            return 0, 0.0
        return u.tokens, u.cost_usd

    def held(self, tenant: str) -> tuple[int, float]:
        """The tokens and cost held by ``tenant``'s requests in flight."""
        u = self._usage.get(tenant)
        return (0, 0.0) if u is None else (u.held_tokens, u.held_cost_usd)


def _over(charged: float, held: float, estimate: float, budget: float) -> Literal["spent", "held"] | None:
    """Why a request with ``estimate`` does not fit in ``budget``: spent (the charges alone leave no room for it),
    held (the holds of requests in flight keep it out), or None: it fits (or nothing is charged or held today)."""
    if charged + held <= 0:
        return None  # a budget smaller than one request still lets one in a day
    if charged >= budget or (charged > 0 and charged + estimate > budget):
        return "spent"
    if charged + held >= budget or charged + held + estimate > budget:
        return "held"
    return None
