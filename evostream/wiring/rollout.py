"""The rollout controller: it follows ``evo.governance`` for a model's running rollout, reads what the rollout's
traffic left on ``evo.completions``, ``evo.alerts``, ``evo.outcomes`` and ``evo.shadow``, judges the current window on
every tick (``rollout.gates``), and writes the rollout's next event, signed as its own actor (role controller):
RolloutStepped when a window passes, RolloutAborted (automatic) as soon as a gate breaks, RolloutCompleted after the
plan's clean cycles at 100%. Each event carries the window's evidence, so ``evostream audit`` and a replay show who
or what decided each step and why.

Here, in the wiring layer, because it meets the governance log (``consumers``), the rollout maths (``rollout``) and the
window fold (``views``).

The windows (``decide``, pure): a window starts at the rollout's last event (RolloutStarted: the shadow phase; each
RolloutStepped: that step). In the shadow phase and at each step below 100% the window is judged as it grows, up to
``SETTLE_S`` before now: ABORT when a gate breaks at one of its fixed looks (``gates.judge_window``), ADVANCE (the next
step) once it is ``shadow_s`` / ``step_s`` old with ``min_samples`` candidate answers and every gate passes over all of
it (a gate broken then: ABORT), and ABORT when it is the plan's ``max_window_s`` old with fewer than ``min_samples``
candidate answers (the candidate gets no traffic). At 100% the window is cut into **cycles**: a cycle ends ``step_s``
after it began, or at its ``min_samples``-th candidate answer if that comes later, and the next begins there; each is
judged on its own answers; ``clean_cycles`` clean cycles in a row complete the rollout, a broken one aborts it, and so
does one ``max_window_s`` old without ``min_samples`` candidate answers. A tick that has not read every partition up to
its end as of the tick's start waits ("still reading") and writes nothing. The cycle boundaries follow from the answers'
times alone, so a restarted controller finds the same ones.

The incumbent's side of a window is its answers in the window; with fewer than ``min_samples`` of them (at 100% it
answers nothing) it is its answers since the rollout started (``baseline: rollout`` in the evidence).

Restart-safe: the controller keeps no state of its own. It reads each rollout's records from the rollout's start
(every partition from the offset of that time, ``EventConsumer(since_us=...)``, never from committed offsets) and
rebuilds the windows from them; its consumer group commits only so that its lag can be watched."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from evostream.core.clock import now_us
from evostream.core.errors import EvoError, GovernanceError
from evostream.core.settings import Settings
from evostream.rollout.gates import Judgement, Verdict, WindowStats, judge_window, look_sizes
from evostream.rollout.plan import RolloutPlan
from evostream.views.rollout import CANDIDATE_ROLES, INCUMBENT_ROLES, LEAD_US, TOPICS, RolloutFold

if TYPE_CHECKING:
    from evostream.consumers.governance.service import Governance
    from evostream.consumers.governance.shapes import RolloutState
    from evostream.core.bus.consumer import EventConsumer

log = logging.getLogger("evostream.rollout")

CONTROLLER_ROLE = "controller"
GROUP = "evostream-rollout-controller"
"""The controller's consumer group (``GROUP-<model>``): it commits only so that its lag can be watched."""
FIRST_IDLE_S = 2.0
"""How long a fresh reader waits without a record before it counts the topics as read (joining and the first fetch
take longer than a tick's wait)."""
IDLE_S = 0.3
"""How long a tick's read waits without a record before it judges."""
MAX_READ_S = 10.0
"""The longest a tick reads; a tick that has not reached every partition's end by then waits ("still reading") and
the next one reads on: a window is never judged on part of its records."""
SETTLE_S = 2.0
"""A tick judges the window up to this long before now: the RiskAlerts and outcomes of the last answers come a
moment after them, and an answer judged before its alert would count as clean."""

Kind = Literal["step", "abort", "complete", "wait"]


@dataclass(frozen=True)
class Action:
    """What a window's verdict asks of the rollout: move to ``step``, abort, complete, or wait; why; the evidence."""

    kind: Kind
    reason: str
    evidence: dict[str, Any]
    step: int | None = None
    rollout_id: str = ""


# --- the decision (pure) -------------------------------------------------------------------------------------------
def window_evidence(
    rollout: RolloutState, plan: RolloutPlan, fold: RolloutFold, since_us: int, until_us: int, window_s: float
) -> tuple[Judgement, dict[str, Any]]:
    """The judgement of the candidate against the incumbent over [since_us, until_us), and its evidence: the verdict
    and each gate, both sides' statistics, the window, the shadow comparisons in it."""
    cand_v = rollout["version"]
    cand, inc, baseline = _sides(rollout, plan, fold, since_us, until_us)
    # the window's looks: cut at the time of its 5th, 10th, 20th, ... candidate answer (``gates.judge_window``)
    times = sorted(a.at_us for a in fold.answers(cand_v, since_us, until_us, CANDIDATE_ROLES).values())
    looks = [_sides(rollout, plan, fold, since_us, times[n - 1] + 1)[:2] for n in look_sizes(len(times))]
    age_s = max(0.0, (until_us - since_us) / 1e6)
    j = judge_window(
        cand,
        inc,
        looks,
        tolerances={name: g.tolerance for name, g in plan.gates.items()},
        confidence=plan.confidence,
        min_samples=plan.min_samples,
        age_s=age_s,
        window_s=window_s,
    )
    evidence = j.evidence() | {
        "window": {"start_us": since_us, "end_us": until_us, "age_s": round(age_s, 3), "window_s": window_s},
        "candidate": {"version": cand_v, **cand.doc()},
        "incumbent": {"version": rollout["incumbent"], "baseline": baseline, **inc.doc()},
        "shadow": fold.shadow(rollout["incumbent"], cand_v, since_us, until_us),
    }
    return j, evidence


def _sides(
    rollout: RolloutState, plan: RolloutPlan, fold: RolloutFold, since_us: int, until_us: int
) -> tuple[WindowStats, WindowStats, str]:
    """The candidate's and the incumbent's statistics over [since_us, until_us), and the incumbent's baseline: the
    window, or (with fewer than ``min_samples`` incumbent answers in it) the rollout so far."""
    cand = fold.stats(rollout["version"], since_us, until_us, CANDIDATE_ROLES)
    inc = fold.stats(rollout["incumbent"], since_us, until_us, INCUMBENT_ROLES)
    if inc.answers >= plan.min_samples:
        return cand, inc, "window"
    return cand, fold.stats(rollout["incumbent"], rollout["started_us"], until_us, INCUMBENT_ROLES), "rollout"


def _starved(plan: RolloutPlan, ev: dict[str, Any], since_us: int, now: int) -> str | None:
    """Why a window (or a cycle) aborts for want of candidate answers: it is ``max_window_s`` old with fewer than
    ``min_samples`` of them; None otherwise."""
    n, age_s = ev["candidate"]["answers"], (now - since_us) / 1e6
    if n >= plan.min_samples or age_s < plan.window_limit_s:
        return None
    return (
        f"the window is {age_s:.1f} s old (max_window_s {plan.window_limit_s:g}) with {n} of {plan.min_samples} "
        "candidate answers: the candidate gets no traffic (did it load? is the mirror on? too few requests?)"
    )


def cycle_end(fold: RolloutFold, rollout: RolloutState, plan: RolloutPlan, since_us: int) -> int | None:
    """Where the cycle that begins at ``since_us`` ends: ``step_s`` later, or just after its ``min_samples``-th
    candidate answer if that comes later; None while it has fewer answers than that."""
    times = sorted(a.at_us for a in fold.answers(rollout["version"], since_us, None, CANDIDATE_ROLES).values())
    if len(times) < plan.min_samples:
        return None
    return max(since_us + int(plan.step_s * 1e6), times[plan.min_samples - 1] + 1)


def decide(rollout: RolloutState, fold: RolloutFold, now: int) -> Action:
    """What the rollout's current window says at ``now`` (see the module's doc)."""
    return dataclasses.replace(_decide(rollout, fold, now), rollout_id=rollout["rollout_id"])


def _decide(rollout: RolloutState, fold: RolloutFold, now: int) -> Action:
    plan = RolloutPlan.from_json(rollout["plan"])
    step, last = rollout["step"], len(plan.steps) - 1
    start = int(rollout["history"][-1]["at_us"]) if rollout["history"] else int(rollout["started_us"])
    if step < 0 and plan.shadow_s == 0:
        why = "no shadow phase (shadow_s 0): step 0 at once"
        return Action("step", why, {"verdict": str(Verdict.ADVANCE), "reason": why, "gates": {}}, 0)
    if step < last:
        window_s = plan.shadow_s if step < 0 else plan.step_s
        j, ev = window_evidence(rollout, plan, fold, start, now, window_s)
        ev |= {"step": step, "weight": rollout["weight"]}
        if j.verdict is Verdict.ABORT:
            return Action("abort", j.reason, ev)
        if j.verdict is Verdict.ADVANCE:
            return Action("step", j.reason, ev, step + 1)
        if (starved := _starved(plan, ev, start, now)) is not None:
            return Action("abort", starved, ev | {"verdict": str(Verdict.ABORT), "reason": starved})
        return Action("wait", j.reason, ev)
    clean: list[dict[str, Any]] = []
    since = start
    while (end := cycle_end(fold, rollout, plan, since)) is not None and end <= now:
        j, ev = window_evidence(rollout, plan, fold, since, end, plan.step_s)
        ev |= {"step": step, "weight": rollout["weight"], "cycle": len(clean) + 1}
        if j.verdict is Verdict.ABORT:
            return Action("abort", f"cycle {len(clean) + 1} at 100%: {j.reason}", ev | {"clean_before": clean})
        clean.append(ev)
        if len(clean) >= plan.clean_cycles:
            why = f"{len(clean)} clean cycle(s) at 100%: {j.reason}"
            done = {"verdict": "COMPLETE", "reason": why, "gates": ev["gates"], "cycles": clean}
            return Action("complete", why, done)
        since = end
    j, ev = window_evidence(rollout, plan, fold, since, now, plan.step_s)
    ev |= {"step": step, "weight": rollout["weight"], "cycle": len(clean) + 1}
    if j.verdict is Verdict.ABORT:
        return Action("abort", f"cycle {len(clean) + 1} at 100%: {j.reason}", ev | {"clean_before": clean})
    if (starved := _starved(plan, ev, since, now)) is not None:
        why = f"cycle {len(clean) + 1} at 100%: {starved}"
        return Action("abort", why, ev | {"verdict": str(Verdict.ABORT), "reason": why, "clean_before": clean})
    return Action("wait", f"{len(clean)} of {plan.clean_cycles} clean cycle(s) at 100%; {j.reason}", ev)


# --- the controller (I/O) ------------------------------------------------------------------------------------------
def controller_actor(
    settings: Settings, server: str, say: Callable[[str], None], name: str | None = None
) -> Governance:
    """The controller's own signer (role controller). On a machine that holds an admin key and none for the
    controller yet, its key is made here and enrolled by that admin, once; otherwise a clear error says what to do."""
    from evostream.consumers.governance.service import key_path
    from evostream.wiring.governed import enrolled_signer

    keys = settings.governance_dir / "keys"
    me = name or settings.rollout_actor
    admin_key = key_path(keys, settings.governance_actor)
    no_admin = (
        f"no key for the rollout controller {me!r} in {keys}, and no admin key ({admin_key}) here to enroll "
        f"one: an admin runs `evostream governance enroll {me} --roles {CONTROLLER_ROLE}` on this machine (or "
        f"`evostream governance keygen {me}` here, then enroll its public key)"
    )
    gov = enrolled_signer(settings, server, me, CONTROLLER_ROLE, "the rollout controller's own key", no_admin, say)
    actor = gov.state().registry.actors.get(me)
    if actor is None or actor["revoked_seq"] is not None:
        state = "revoked" if actor else "not enrolled"
        raise GovernanceError(
            f"{me!r} has a key in {keys} but is {state}: an admin enrolls its public key with "
            f"`evostream governance enroll {me} --roles {CONTROLLER_ROLE} --public-key HEX`"
        )
    if not {CONTROLLER_ROLE, "admin"} & set(actor["roles"]):
        roles = "/".join(actor["roles"])
        raise GovernanceError(f"{me!r} is enrolled as {roles}: a rollout controller needs the role {CONTROLLER_ROLE}")
    if gov.key.key_id not in actor["keys"]:
        raise GovernanceError(f"the key of {me!r} in {keys} is not the one enrolled: copy the enrolled key there")
    return gov


@dataclass
class _Reader:
    """The records of one rollout, from its start: a consumer placed by time, and the fold it feeds."""

    rollout_id: str
    consumer: EventConsumer
    fold: RolloutFold = field(default_factory=RolloutFold)
    fresh: bool = True


class RolloutController:
    """Follows ``model``'s rollouts and acts on their windows; ``tick()`` once, or ``run()`` until stopped."""

    def __init__(
        self,
        server: str,
        gov: Governance,
        model: str,
        *,
        clock: Callable[[], int] = now_us,
        group: str | None = None,
    ) -> None:
        from evostream.core.bus.admin import PartitionEnds
        from evostream.schemas.codec import RecordCodec

        self.server = server
        self.gov = gov
        self.model = model
        self.clock = clock
        self.group = group or f"{GROUP}-{model}"
        self._codecs = {topic: RecordCodec(schema) for topic, schema in TOPICS.items()}
        self._reader: _Reader | None = None
        self._ends = PartitionEnds(server)
        self.last: Action | None = None
        """The last tick's action (None: no rollout ran)."""

    def tick(self) -> Action | None:
        """Read the log, judge the running rollout's window, write its event if the verdict asks for one; the action
        (None while no rollout of the model runs)."""
        rollout = self.gov.state().registry.active_rollout(self.model)
        if rollout is None:
            self._drop()
            self.last = None
            return None
        reader = self._follow(rollout)
        behind = self._read(reader)
        if behind:
            why = f"still reading: {behind} record(s) behind the topics' ends as of this tick's start"
            action = Action(
                "wait", why, {"verdict": str(Verdict.WAIT), "reason": why}, rollout_id=rollout["rollout_id"]
            )
        else:
            action = decide(rollout, reader.fold, self.clock() - int(SETTLE_S * 1e6))
            self._act(rollout, action)
        self.last = action
        return action

    def run(self, tick_s: float, stop: threading.Event, report: Callable[[Action | None], None] | None = None) -> None:
        """Tick every ``tick_s`` until ``stop`` is set; an error of a tick (the broker away, the log refused) is
        logged and the next tick tries again."""
        while True:
            try:
                action = self.tick()
                if report is not None:
                    report(action)
            except EvoError as e:
                log.error("rollout controller of %s: %s (trying again in %.1f s)", self.model, e, tick_s)
            if stop.wait(tick_s):
                return

    def close(self) -> None:
        self._drop()

    # --- reading -------------------------------------------------------------------------------------------------
    def _follow(self, rollout: RolloutState) -> _Reader:
        """The reader of this rollout: a new one, placed at the rollout's start, when the rollout is new to it."""
        from evostream.core.bus.consumer import EventConsumer

        if self._reader is not None and self._reader.rollout_id == rollout["rollout_id"]:
            return self._reader
        from evostream.core.bus.admin import ensure_topics
        from evostream.schemas.catalog import CATALOG

        self._drop()
        ensure_topics(self.server, [t for t in CATALOG if t.name in TOPICS])  # a fresh broker may lack evo.shadow
        since = int(rollout["started_us"]) - LEAD_US
        consumer = EventConsumer(self.server, self.group, list(TOPICS), since_us=since)
        self._reader = _Reader(rollout["rollout_id"], consumer)
        log.info("rollout %s of %s: reading its records from %d us", rollout["rollout_id"], self.model, since)
        return self._reader

    def _read(self, reader: _Reader) -> int:
        """Fold what the topics held when the read began (every partition up to its end as of then), stopping early
        when they are idle or after ``MAX_READ_S``; how many records it is behind those ends (0: caught up)."""
        idle_s = FIRST_IDLE_S if reader.fresh else IDLE_S
        ends = self._ends(reader.consumer.next_offsets)
        for topic, rec in self._records(reader.consumer, idle_s, ends):
            reader.fold.add(topic, rec)
        reader.fresh = False
        return sum(max(0, end - reader.consumer.next_offsets.get(tp, 0)) for tp, end in ends.items())

    def _records(
        self, consumer: EventConsumer, idle_s: float, ends: dict[tuple[str, int], int]
    ) -> Iterator[tuple[str, Any]]:
        started = time.monotonic()
        idle = 0.0
        poll_s = 0.1
        while idle < idle_s and time.monotonic() - started < MAX_READ_S:
            msgs = consumer.poll_batch(1000, poll_s)
            idle = 0.0 if msgs else idle + poll_s
            for m in msgs:
                topic = m.topic()
                codec = self._codecs.get(topic or "")
                rec = None if codec is None else codec.decode_or_skip(m.value())
                if rec is not None:
                    yield str(topic), rec
            if all(consumer.next_offsets.get(tp, -1) >= end for tp, end in ends.items()):
                return

    def _drop(self) -> None:
        if self._reader is not None:
            self._reader.consumer.close()
            self._reader = None

    # --- acting --------------------------------------------------------------------------------------------------
    def _act(self, rollout: RolloutState, action: Action) -> None:
        rid = rollout["rollout_id"]
        reason = f"controller: {action.reason}"
        try:
            if action.kind == "step" and action.step is not None:
                self.gov.step_rollout(self.model, rid, action.step, action.evidence, reason)
                log.info("rollout %s: step %d (%s)", rid, action.step, action.reason)
            elif action.kind == "abort":
                self.gov.abort_rollout(self.model, rid, action.evidence, True, reason)
                log.warning("rollout %s aborted: %s", rid, action.reason)
            elif action.kind == "complete":
                self.gov.complete_rollout(self.model, rid, action.evidence, reason)
                log.info("rollout %s completed: %s", rid, action.reason)
        except GovernanceError as e:  # a person acted first (aborted it), or a rule refused: read again next tick
            log.warning("rollout %s: %s refused: %s", rid, action.kind, e)
            if action.kind in ("step", "complete"):
                self._abort_if_candidate_lost(rollout["rollout_id"])

    def _abort_if_candidate_lost(self, rid: str) -> None:
        """Abort (automatic) a rollout whose candidate no longer holds what production needs (a failed validation, a
        lost approval): no step or completion can follow, so retrying would wait forever."""
        from evostream.consumers.governance.policy import candidate_refusal

        registry = self.gov.state().registry
        r = registry.rollouts.get(rid)
        if r is None or r["status"] != "running":
            return
        why = candidate_refusal(self.model, r, registry.actors, registry.models, registry.policy)
        if why is not None:
            self.gov.abort_rollout(self.model, rid, {"verdict": "ABORT", "reason": why}, True, f"controller: {why}")
            log.warning("rollout %s aborted: %s", rid, why)
