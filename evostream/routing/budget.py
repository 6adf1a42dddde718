"""Per-tenant daily budgets and rate limits, the API's front door checks them before a request is published.

The limits come from configuration (``Settings.tenant_limits``, a JSON file)::

    {"acme": {"tokens_per_day": 200000, "cost_per_day_usd": 5.0, "requests_per_s": 2, "burst": 10},
     "*":    {"requests_per_s": 1, "burst": 5}}

A tenant named in the file has its own row; every other tenant has the ``*`` row's limits (each its own bucket and
its own budget: ``*`` is a default, not a pool); without a ``*`` row an unnamed tenant has no limits. Every field is
optional (absent: that limit is off). A day is a UTC day: the budget's counts start again at 00:00 UTC.

- Rate: a token bucket per tenant, ``requests_per_s`` on average and ``burst`` at once from rest (``burst``
  defaults to ``max(1, ceil(requests_per_s))``).
- Budget: the tokens (prompt and output) and the cost (``Completion.cost_usd``) of the tenant's answers today,
  charged as the answers come (``charge``). A request is refused once the day's count has reached the budget; the
  requests in flight when it is reached may go over it by their own answers.

A refusal names the limit and the seconds until the tenant can be let in again: the bucket's refill for the rate,
the next UTC midnight for a budget (``Retry-After``). Pure: the caller passes the time (seconds since the epoch)."""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
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


@dataclass
class _Usage:
    day: int
    tokens: int = 0
    cost_usd: float = 0.0
    bucket: float = 0.0
    at: float = 0.0


class Budgets:
    """Rate limits and daily budgets of every tenant: ``admit`` before a request, ``charge`` with its answer.
    Remembers at most ``max_tenants`` tenants (the longest unseen are forgotten first)."""

    def __init__(self, table: LimitsTable, max_tenants: int = 100_000) -> None:
        self.table = table
        self.max_tenants = max_tenants
        self._usage: OrderedDict[str, _Usage] = OrderedDict()

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

    def admit(self, tenant: str, now: float) -> Refusal | None:
        """Let one request of ``tenant`` in (taking a token of its bucket), or say why not. The budget is checked
        first: a request refused for its budget takes nothing from the bucket."""
        limits = self.table.of(tenant)
        if limits is None:
            return None
        u = self._usage_of(tenant, limits, now)
        midnight = (u.day + 1) * DAY_S - now
        if limits.tokens_per_day is not None and u.tokens >= limits.tokens_per_day:
            return Refusal(
                tenant,
                "tokens_per_day",
                midnight,
                f"tenant {tenant!r} used {u.tokens:,} of its {limits.tokens_per_day:,} tokens today (UTC)",
            )
        if limits.cost_per_day_usd is not None and u.cost_usd >= limits.cost_per_day_usd:
            return Refusal(
                tenant,
                "cost_per_day_usd",
                midnight,
                f"tenant {tenant!r} spent ${u.cost_usd:.6g} of its ${limits.cost_per_day_usd:g} today (UTC)",
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
        return None

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
