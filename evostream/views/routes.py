"""The routing ledger: the decisions on ``evo.routes`` and the Completions they point at, folded by request (pure:
records in, answers out; ``read_ledger`` is the one read of the log).

It answers what people ask of the router: the decisions of one request in order (``request``), how many decisions
went where per route, tenant, target and stage (``decision_counts``), and what the answers cost against what they
would have cost had the reference answered everything (``savings``).

The counterfactual: a request the reference did not answer would have cost its answer's tokens (prompt and output of
the final answer) at the reference's price; the reference is the decision's candidate ``reference`` (its
``model_version``), priced by the route's ``PriceTable``. A request the reference did answer costs the same either
way, and an escalated request paid for its self model's partial answer too: paid is the sum of ``cost_usd`` of every
Completion of the request, as written. A refusal costs nothing and is counted apart; a request with no final answer
yet is left out of the money. The self-share is self-answered over self- plus reference-answered requests: a cache
hit never reached the router, so it counts in neither (it is counted apart)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from evostream.core.bus.reader import TopicReader
from evostream.routing.prices import PriceTable
from evostream.schemas.catalog import COMPLETIONS, ROUTES

Record = Mapping[str, Any]


@dataclass
class RequestRoute:
    """One request's route: its decisions in the order they were taken, its Completions in the order they were
    made (an escalated request has the self model's partial, finish ESCALATED, then the reference's answer)."""

    request_id: str
    decisions: list[Record] = field(default_factory=list)
    completions: list[Record] = field(default_factory=list)

    @property
    def first(self) -> Record:
        return self.decisions[0]

    @property
    def started_us(self) -> int:
        return int(self.first["decided_at_us"])

    @property
    def tenant(self) -> str:
        return str(self.first["tenant"])

    @property
    def route(self) -> str:
        return str(self.first["route"])

    @property
    def chosen(self) -> str:
        """Where the request went in the end: the last decision's target (self, reference, cache or refused)."""
        return str(self.decisions[-1]["chosen"])

    @property
    def escalated(self) -> bool:
        """Moved to the reference mid-answer."""
        return any(d["stage"] == "GENERATION" and d["chosen"] == "reference" for d in self.decisions)

    @property
    def partials(self) -> list[Record]:
        """The self model's partial answers (finish ESCALATED)."""
        return [c for c in self.completions if c["finish_reason"] == "ESCALATED"]

    @property
    def final(self) -> Record | None:
        """The answer the client got: the last Completion that is not a partial, or None while there is none."""
        finals = [c for c in self.completions if c["finish_reason"] != "ESCALATED"]
        return finals[-1] if finals else None

    def escalations(self) -> list[tuple[Record, Record, Record]]:
        """Each mid-answer move the reference has answered: (the GENERATION decision, the self model's partial,
        the reference's error-free final answer)."""
        final = self.final
        if final is None or final["finish_reason"] == "ERROR" or final.get("error"):
            return []
        partials = {str(c["trace_id"]): c for c in self.partials}
        return [
            (d, partials[str(d["trace_id"])], final)
            for d in self.decisions
            if d["stage"] == "GENERATION" and d["chosen"] == "reference" and str(d["trace_id"]) in partials
        ]

    @property
    def reference_version(self) -> str | None:
        """The reference the router weighed (the last decision that names one)."""
        for d in reversed(self.decisions):
            for c in d["candidates"]:
                if c["target"] == "reference" and c["model_version"]:
                    return str(c["model_version"])
        return None

    @property
    def paid_usd(self) -> float:
        return float(sum(float(c.get("cost_usd", 0.0)) for c in self.completions))

    def reference_usd(self, prices: PriceTable, reference: str | None = None) -> float | None:
        """What the final answer's tokens cost at the reference's price; None without a final answer."""
        done = self.final
        if done is None:
            return None
        version = self.reference_version or reference or ""
        return prices.cost(version, int(done["prompt_token_count"]), int(done["token_count"]))

    def order(self) -> None:
        """Decisions by time taken, Completions by time made (the two topics are read apart)."""
        self.decisions.sort(key=lambda d: int(d["decided_at_us"]))
        self.completions.sort(key=lambda c: int(c["completed_at_us"]))


def decision_doc(d: Record) -> dict[str, Any]:
    """A decision as people read it (every field of the record; JSON-safe)."""
    return {k: (list(map(dict, v)) if k == "candidates" else v) for k, v in d.items()}


def completion_doc(c: Record) -> dict[str, Any]:
    """A Completion of the route, without its embedding and token ids (machines' fields)."""
    keep = ("trace_id", "model_version", "finish_reason", "output_text", "token_count", "prompt_token_count")
    return {k: c[k] for k in keep} | {
        "cached": bool(c.get("cached", False)),
        "cost_usd": float(c.get("cost_usd", 0.0)),
        "completed_at_us": int(c["completed_at_us"]),
    }


def route_doc(r: RequestRoute) -> dict[str, Any]:
    """One request's route as the API returns it."""
    final = r.final
    return {
        "request_id": r.request_id,
        "tenant": r.tenant,
        "route": r.route,
        "chosen": r.chosen,
        "escalated": r.escalated,
        "decisions": [decision_doc(d) for d in r.decisions],
        "partial_traces": [c["trace_id"] for c in r.partials],
        "final_trace": None if final is None else final["trace_id"],
        "completions": [completion_doc(c) for c in r.completions],
        "paid_usd": r.paid_usd,
    }


def decision_line(d: Record) -> str:
    """A decision in one line: stage, where it went, the score against the gate, the level and policy, why."""
    risk = d.get("risk")
    score = "-" if risk is None else f"{float(risk):.3f}"
    step = f" at step {d['step']}" if d.get("step") is not None else ""
    version = f" ({d['chosen_version']})" if d.get("chosen_version") else ""
    policy = str(d.get("policy_version") or "")[:12] or "-"
    return (
        f"{d['stage']}{step}: {d['chosen']}{version}, score {score} vs gate {float(d['gate']):.3f}, level "
        f"{d['level']}, policy {policy}: {d['reason']}"
    )


@dataclass
class Tally:
    """Requests and money over a slice of the log."""

    requests: int = 0
    """Requests decided in the slice (refusals included)."""
    self_answered: int = 0
    reference_answered: int = 0
    escalated: int = 0
    cache_hits: int = 0
    refusals: int = 0
    pending: int = 0
    """Admitted but no final answer on the log yet (left out of the money)."""
    paid_usd: float = 0.0
    reference_usd: float = 0.0
    """What the same answers would have cost from the reference."""

    @property
    def saved_usd(self) -> float:
        return self.reference_usd - self.paid_usd

    @property
    def self_share(self) -> float | None:
        """Self-answered over routed requests (self + reference); None with none routed."""
        routed = self.self_answered + self.reference_answered
        return None if routed == 0 else self.self_answered / routed

    def add(self, r: RequestRoute, prices: PriceTable, reference: str | None) -> None:
        self.requests += 1
        chosen = r.chosen
        if chosen == "refused":
            self.refusals += 1
            return
        ref = r.reference_usd(prices, reference)
        if ref is None:
            self.pending += 1
            return
        if chosen == "cache":
            self.cache_hits += 1
        elif chosen == "self":
            self.self_answered += 1
        else:
            self.reference_answered += 1
            self.escalated += r.escalated
        self.paid_usd += r.paid_usd
        self.reference_usd += ref

    def doc(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "self_answered": self.self_answered,
            "reference_answered": self.reference_answered,
            "escalated": self.escalated,
            "cache_hits": self.cache_hits,
            "refusals": self.refusals,
            "pending": self.pending,
            "paid_usd": self.paid_usd,
            "reference_usd": self.reference_usd,
            "saved_usd": self.saved_usd,
            "self_share": self.self_share,
        }


@dataclass
class Savings:
    """Cost paid against always the reference, in all and per tenant and per route."""

    total: Tally = field(default_factory=Tally)
    by_tenant: dict[str, Tally] = field(default_factory=dict)
    by_route: dict[str, Tally] = field(default_factory=dict)
    unpriced: set[str] = field(default_factory=set)
    """References the price table has no price for (they cost 0 here, which understates the saving)."""

    def doc(self) -> dict[str, Any]:
        return {
            "total": self.total.doc(),
            "by_tenant": {k: t.doc() for k, t in sorted(self.by_tenant.items())},
            "by_route": {k: t.doc() for k, t in sorted(self.by_route.items())},
            "unpriced": sorted(self.unpriced),
        }


DecisionKey = tuple[str, str, str, str]
"""(route, tenant, stage, chosen)."""


class RouteLedger:
    """The fold. ``add(topic, record)`` for each RouteDecision and Completion read, in any order: a Completion whose
    request has no decision yet waits (the last ``max_waiting``) for it, as the two topics are read apart. Bounded
    by ``max_requests`` (oldest requests dropped first; None: unbounded, for one pass over a range)."""

    def __init__(self, max_requests: int | None = None, max_waiting: int = 10_000) -> None:
        self.max_requests = max_requests
        self.max_waiting = max_waiting
        self._requests: OrderedDict[str, RequestRoute] = OrderedDict()
        self._waiting: OrderedDict[str, list[Record]] = OrderedDict()
        self._ids: set[tuple[str, str]] = set()

    def add(self, topic: str, rec: Record) -> None:
        if topic == ROUTES:
            self.add_decision(rec)
        elif topic == COMPLETIONS:
            self.add_completion(rec)

    def add_decision(self, d: Record) -> None:
        if not self._fresh("d", str(d["decision_id"])):
            return
        rid = str(d["request_id"])
        r = self._requests.get(rid)
        if r is None:
            r = self._requests[rid] = RequestRoute(rid)
            r.completions.extend(self._waiting.pop(rid, []))
            while self.max_requests is not None and len(self._requests) > self.max_requests:
                _, gone = self._requests.popitem(last=False)
                self._forget(gone)
        r.decisions.append(d)
        r.order()

    def add_completion(self, c: Record) -> None:
        """A Completion of a request (a SHADOW one, a candidate's answer to a mirrored copy, is no answer of the
        route: left out)."""
        rid = str(c.get("request_id") or "")
        if not rid or c.get("role") == "SHADOW" or not self._fresh("c", str(c["trace_id"])):
            return
        r = self._requests.get(rid)
        if r is not None:
            r.completions.append(c)
            r.order()
            return
        self._waiting.setdefault(rid, []).append(c)
        self._waiting.move_to_end(rid)
        while len(self._waiting) > self.max_waiting:
            _, gone = self._waiting.popitem(last=False)
            for g in gone:
                self._ids.discard(("c", str(g["trace_id"])))

    def _fresh(self, kind: str, ident: str) -> bool:
        """Whether a record is new (a decision retried, a Completion delivered twice, count once)."""
        if (kind, ident) in self._ids:
            return False
        self._ids.add((kind, ident))
        return True

    def _forget(self, r: RequestRoute) -> None:
        for d in r.decisions:
            self._ids.discard(("d", str(d["decision_id"])))
        for c in r.completions:
            self._ids.discard(("c", str(c["trace_id"])))

    # --- readers -------------------------------------------------------------------------------------------------
    def request(self, request_id: str) -> RequestRoute | None:
        return self._requests.get(request_id)

    def requests(self, since_us: int | None = None, until_us: int | None = None) -> list[RequestRoute]:
        """The requests first decided in [since_us, until_us), oldest first."""
        out = [
            r
            for r in self._requests.values()
            if (since_us is None or r.started_us >= since_us) and (until_us is None or r.started_us < until_us)
        ]
        return sorted(out, key=lambda r: r.started_us)

    def decision_counts(self, since_us: int | None = None, until_us: int | None = None) -> dict[DecisionKey, int]:
        """Decisions taken in [since_us, until_us) per (route, tenant, stage, chosen)."""
        counts: dict[DecisionKey, int] = {}
        for r in self._requests.values():
            for d in r.decisions:
                at = int(d["decided_at_us"])
                if (since_us is None or at >= since_us) and (until_us is None or at < until_us):
                    key = (str(d["route"]), str(d["tenant"]), str(d["stage"]), str(d["chosen"]))
                    counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items()))

    def savings(
        self,
        prices: PriceTable,
        since_us: int | None = None,
        until_us: int | None = None,
        reference: str | None = None,
    ) -> Savings:
        """Cost paid against always the reference for the requests first decided in [since_us, until_us);
        ``reference``: the reference's version where a request's decisions name none (a cache hit's; by default the
        one the range's decisions name most often)."""
        out = Savings()
        chosen = self.requests(since_us, until_us)
        if reference is None:  # the reference the decisions name most often
            named = [v for r in chosen if (v := r.reference_version) is not None]
            reference = max(set(named), key=named.count) if named else None
        for r in chosen:
            out.total.add(r, prices, reference)
            out.by_tenant.setdefault(r.tenant, Tally()).add(r, prices, reference)
            out.by_route.setdefault(r.route, Tally()).add(r, prices, reference)
            version = r.reference_version or reference
            if r.chosen != "refused" and (version is None or not prices.priced(version)):
                out.unpriced.add(version or "(no reference named)")
        return out


def fold(decisions: Iterable[Record], completions: Iterable[Record], max_requests: int | None = None) -> RouteLedger:
    """A ledger of ``decisions`` and ``completions`` (each in any order)."""
    ledger = RouteLedger(max_requests)
    for d in decisions:
        ledger.add_decision(d)
    for c in completions:
        ledger.add_completion(c)
    return ledger


def read_ledger(
    server: str,
    since_us: int | None = None,
    until_us: int | None = None,
    keep: Callable[[Record], bool] | None = None,
    idle_s: float = 3.0,
) -> RouteLedger:
    """The decisions on evo.routes first decided from ``since_us`` (that ``keep`` keeps: all by default), and the
    Completions of their requests; each topic read from ``since_us`` until it goes idle. Decisions taken at or after
    ``until_us`` are left out; a request's Completions are read whenever they came."""
    ledger = RouteLedger()
    with TopicReader(server, ROUTES, "RouteDecision", since_us=since_us, idle_s=idle_s, name="read-routes") as rd:
        for rec in rd:
            if (until_us is None or int(rec["decided_at_us"]) < until_us) and (keep is None or keep(rec)):
                ledger.add_decision(rec)
    wanted = {r.request_id for r in ledger.requests()}
    if not wanted:
        return ledger
    with TopicReader(server, COMPLETIONS, "Completion", since_us=since_us, idle_s=idle_s, name="read-routed") as rd:
        for rec in rd:
            if rec["request_id"] in wanted:
                ledger.add_completion(rec)
    return ledger


def read_request(server: str, request_id: str, idle_s: float = 3.0) -> RequestRoute | None:
    """One request's route from the log (its decisions and every Completion of it), or None when no decision names
    it; both topics read from their start until idle (keyed by request and by trace: a scan, as ``find_completion``)."""
    ledger = read_ledger(server, keep=lambda d: d["request_id"] == request_id, idle_s=idle_s)
    return ledger.request(request_id)
