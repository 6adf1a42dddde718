"""Governance replay rates: folding a signed log into the registry, without and with verification.

The log is synthetic but shaped like a real one and built in memory (no broker: this measures the projection, not
Kafka): an admin enrolls itself, a proposer and four approvers and sets a two-approver policy; then versions of many
models go through their lives, several at once and interleaved as concurrent work would be: registration (parent =
what serves), proposal with drift evidence, validation (some fail), staging, an approval request, grants from two
distinct approvers (sometimes after a rejection that voids earlier grants), promotion to production by the admin,
a champion alias, now and then a rollback to an earlier validated version, and rarely a key rotation (an approver
revoked and enrolled again with a new key). Every event is linked and signed (Ed25519) as the writer would.

Measured, each over --reps runs of ``replay`` on the whole log (median, then min..max):
- fold: ``verify=False``, the projection only;
- verified: hash of every event, its link, its actor's key, Ed25519 signature, role and policy, then the fold.
Both must reach the same state (the whole ``to_json``) with no finding, or the bench fails.

Run: python -m bench.replay [--events 100000 --reps 5 --seed 0]
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from evostream.consumers.governance import policy as rules
from evostream.consumers.governance.events import ALL_MODELS, GovEvent
from evostream.consumers.governance.keys import ActorKey, sign_event
from evostream.consumers.governance.projection import Registry, replay

START_US = 1_760_000_000_000_000
ADMIN, PROPOSER, APPROVERS = "root", "evolution", ("alice", "bob", "carol", "dave")
OPERATORS = ("prune_heads", "prune_neurons", "distill", "finetune_lora", "quantize_int8")


class Chain:
    """A governance log in memory: each append is linked to the last event and signed by its actor's key (or
    ``key``: tests sign with the wrong one on purpose)."""

    def __init__(self, seed: int = 0, start_us: int = START_US) -> None:
        self.rng = random.Random(seed)
        self.keys: dict[str, ActorKey] = {}
        self.events: list[GovEvent] = []
        self.now_us = start_us

    def new_key(self, actor: str) -> ActorKey:
        self.keys[actor] = ActorKey.from_seed(self.rng.randbytes(32))
        return self.keys[actor]

    def append(
        self,
        type_: str,
        actor: str,
        payload: Mapping[str, Any],
        model_name: str = ALL_MODELS,
        reason: str = "",
        key: ActorKey | None = None,
    ) -> GovEvent:
        key = key or self.keys[actor]
        self.now_us += self.rng.randrange(1_000_000, 60_000_000)
        ev = GovEvent(
            type=type_,
            actor=actor,
            key_id=key.key_id,
            payload=dict(payload),
            model_name=model_name,
            reason=reason,
            event_id=str(uuid.UUID(int=self.rng.getrandbits(128), version=4)),
        )
        prev = self.events[-1].hash if self.events else ""
        ev = sign_event(ev.linked(len(self.events), prev, self.now_us), key)
        self.events.append(ev)
        return ev

    def enroll(self, actor: str, roles: list[str], by: str = ADMIN) -> GovEvent:
        key = self.new_key(actor)
        payload = {"actor_id": actor, "key_id": key.key_id, "public_key": key.public_hex, "roles": roles}
        return self.append("ActorEnrolled", by, payload, reason=f"enroll {actor} as {', '.join(roles)}")

    def genesis(self, admin: str = ADMIN) -> GovEvent:
        key = self.new_key(admin)
        payload = {"actor_id": admin, "key_id": key.key_id, "public_key": key.public_hex, "roles": ["admin"]}
        return self.append("ActorEnrolled", admin, payload, reason="genesis")

    def log(self) -> list[tuple[int, GovEvent]]:
        """(offset, event) as a transactional topic holds them: each commit marker takes an offset too."""
        return [(2 * i, ev) for i, ev in enumerate(self.events)]


Step = tuple[str, str, dict[str, Any], str]  # (type, actor, payload, model)


def _lifecycle(chain: Chain, reg: Registry, model: str, version: str) -> Iterator[Step]:
    """One version's life; each step is decided when it is taken (other work is interleaved), from ``reg``: the
    registry of the log so far."""
    rng = chain.rng
    known = list(reg.models[model]["versions"]) if model in reg.models else []
    parent = reg.production(model) or (known[-1] if known else None)
    op = rng.choice(OPERATORS)
    yield (
        "ModelRegistered",
        PROPOSER,
        {
            "version": version,
            "artifact_uri": f"file:///var/lib/evostream/artifacts/{model}/{version}.safetensors",
            "artifact_sha256": rng.randbytes(32).hex(),
            "parent": parent,
            "operator": op,
            "operator_params": {"fraction": round(rng.uniform(0.05, 0.4), 3), "layers": rng.sample(range(12), 3)},
            "metrics": {"task_accuracy": round(rng.uniform(0.6, 0.95), 4), "ppl": round(rng.uniform(8, 30), 3)},
        },
        model,
    )
    yield (
        "CandidateProposed",
        PROPOSER,
        {
            "version": version,
            "evidence": {
                "drift_mmd": round(rng.uniform(0, 0.2), 5),
                "window_end_us": chain.now_us,
                "dormant_heads": rng.randrange(0, 40),
            },
        },
        model,
    )
    passed = rng.random() < 0.85
    gates = {
        "task_suite": {"accuracy": round(rng.uniform(0.6, 0.95), 4), "min": 0.7, "passed": passed},
        "replay": {"traces": rng.randrange(200, 2000), "agreement": round(rng.uniform(0.8, 1), 4)},
    }
    yield "ValidationCompleted", PROPOSER, {"version": version, "passed": passed, "gates": gates}, model
    if not passed:
        return
    yield "Promoted", PROPOSER, {"version": version, "stage": "staging", "alias": None}, model
    yield "ApprovalRequested", PROPOSER, {"version": version, "stage": "production"}, model
    first, second, third = rng.sample(APPROVERS, 3)
    if rng.random() < 0.15:
        yield "ApprovalGranted", first, {"version": version, "stage": "production"}, model
        yield "ApprovalRejected", third, {"version": version, "stage": "production"}, model
    yield "ApprovalGranted", first, {"version": version, "stage": "production"}, model
    yield "ApprovalGranted", second, {"version": version, "stage": "production"}, model
    yield "Promoted", ADMIN, {"version": version, "stage": "production", "alias": None}, model
    if rng.random() < 0.3:
        yield "Promoted", ADMIN, {"version": version, "stage": None, "alias": "champion"}, model
    if rng.random() < 0.05:
        current = reg.production(model)
        earlier = [
            v
            for v, d in reg.models[model]["versions"].items()
            if v != current and d["stage"] == "archived" and rules.passed_validation(d)
        ]
        if earlier:
            target = earlier[-1]
            yield "RolledBack", ADMIN, {"version": target, "from_version": current}, model


def build_log(n: int, seed: int = 0, models: int = 40, concurrent: int = 8) -> Chain:
    """A valid signed log of exactly ``n`` events (n >= 1) with the life of many versions of ``models`` models."""
    chain = Chain(seed)
    chain.genesis()
    chain.enroll(PROPOSER, ["proposer"])
    for a in APPROVERS:
        chain.enroll(a, ["approver"])
    chain.append("PolicyChanged", ADMIN, {"policy": {"production_approvals": 2}}, reason="two approvers for prod")
    rng, reg = chain.rng, Registry()
    for ev in chain.events:
        reg.apply(ev, verify=False)
    counters = [0] * models

    def new_work() -> Iterator[Step]:
        m = rng.randrange(models)
        counters[m] += 1
        return _lifecycle(chain, reg, f"model-{m:02d}", f"v{counters[m]}")

    work = [new_work() for _ in range(concurrent)]
    while len(chain.events) < n:
        if rng.random() < 0.0005:  # key rotation: an approver's key is revoked, a new one enrolled
            who = rng.choice(APPROVERS)
            reg.apply(chain.append("ActorRevoked", ADMIN, {"actor_id": who}, reason="key rotation"), verify=False)
            reg.apply(chain.enroll(who, ["approver"]), verify=False)
            continue
        i = rng.randrange(concurrent)
        step = next(work[i], None)
        if step is None:
            work[i] = new_work()
            continue
        type_, actor, payload, model = step
        # interleaving can make a step moot (another version took production, an alias moved): skip it then
        if rules.refusal(type_, model, payload, reg.actors, reg.models, reg.policy) is not None:
            continue
        reg.apply(chain.append(type_, actor, payload, model, reason=f"{type_} by {actor}"), verify=False)
    del chain.events[n:]
    return chain


def _rates(fn: Callable[[], object], n: int, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(n / (time.perf_counter() - t0))
    return out


def _line(name: str, rates: list[float]) -> str:
    return f"{name:>9} {statistics.median(rates):12,.0f} events/s   (min..max {min(rates):,.0f}..{max(rates):,.0f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.perf_counter()
    chain = build_log(args.events, args.seed)
    built_s = time.perf_counter() - t0
    log = chain.log()
    folded, found_fold = replay(log, verify=False)
    verified, found = replay(log)
    if found or found_fold or folded.to_json() != verified.to_json():
        sys.exit(f"the built log does not replay cleanly: {[str(f) for f in found[:3]]}")
    counts: dict[str, int] = {}
    for ev in chain.events:
        counts[ev.type] = counts.get(ev.type, 0) + 1
    versions = sum(len(m["versions"]) for m in verified.models.values())
    print(f"# {platform.processor() or platform.machine()}, Python {platform.python_version()}, one core")
    print(
        f"# log: {len(log):,} events, {len(verified.models)} models, {versions:,} versions, built and signed in "
        f"{built_s:.1f} s; " + ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items()))
    )
    print(_line("fold", _rates(lambda: replay(log, verify=False), len(log), args.reps)))
    print(_line("verified", _rates(lambda: replay(log), len(log), args.reps)))
    print(f"# {args.reps} reps each; both reach the same registry with no finding")
    print(f"# reproduce: python -m bench.replay --events {args.events} --reps {args.reps} --seed {args.seed}")


if __name__ == "__main__":
    main()
