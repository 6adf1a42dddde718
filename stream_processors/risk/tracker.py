"""What the risk agent does with one event, as a pure function of the trace's stored state (no Faust).

The state of a trace is one JSON-able dict, written back whole after every event: a changelog message therefore
carries the risk state and the input offsets it includes together, and an event replayed after a crash (offset at
or below the stored one) is recognised and skipped. Counts are neither lost nor doubled.

A trace's state is kept for the replay horizon after its last event (``expired``): long enough to recognise what a
restart replays (offsets are committed every second), then dropped with a tombstone on the changelog, so neither
the table nor a restart's recovery grows with the traces ever served. The horizon is measured in event time, against
how far the streams have been read (``StreamProgress``), not against the wall clock: a worker that was down longer
than the horizon still has the completions of its unfinished traces in its backlog, and must not give them up.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from evostream.core.errors import FoldError
from evostream.models.risk_probe import FeatureSums, RiskProbe
from evostream.schemas.blocks import StepColumns
from evostream.stream_processors.checks import block_shape, check_block_joins, check_step_joins, step_shape
from evostream.stream_processors.fold import Fold
from evostream.stream_processors.risk.policy import RiskPolicy, family_of, policy_for
from evostream.stream_processors.risk.score import SEVERITY_RANK, Assessment, TraceRisk

__all__ = ["SEVERITY_RANK", "RiskTracker", "ServedProbe", "StreamProgress", "expired"]
STATE_LAYOUT = 2
"""Version of the stored state's layout: raise it when the layout changes, so a worker never reads old state.
2: the stored input offset is a StepBlock's on evo.step-blocks (1: a GenerationStep's on evo.steps, which every block
would have been skipped against)."""
TABLE = f"risk-traces-v{STATE_LAYOUT}"
"""The risk table (and, prefixed with the app id, its changelog topic)."""


def expired(state: Mapping[str, Any], progress_us: int, horizon_us: int) -> bool:
    """Whether a trace's state may go: the streams were read ``horizon_us`` of event time past its last event
    (``progress_us``, from ``StreamProgress``). A finished trace is kept that long only to recognise a replay of its
    events; an unfinished one whose steps or completion never came is given up. A state written before event times
    were kept goes by the time it was folded (``seen_us``); one written before the horizon existed, at the first
    sweep."""
    return progress_us - int(state.get("event_us", state.get("seen_us", 0))) > horizon_us


class StreamProgress:
    """How far the risk agent has read its streams, in event time: per stream, the latest event time folded; overall,
    the stream furthest behind (a trace's completion comes on the other stream than its steps, and a backlog may be
    read faster on one). None until each stream has brought an event since the worker started: a restarted worker
    gives nothing up before it reads where it stopped."""

    def __init__(self, streams: Sequence[str]) -> None:
        self.latest: dict[str, int | None] = dict.fromkeys(streams)

    def fold(self, stream: str, event_us: int) -> None:
        """An event of ``stream`` was read, stamped ``event_us`` by its producer."""
        seen = self.latest[stream]
        self.latest[stream] = event_us if seen is None else max(seen, event_us)

    def now(self) -> int | None:
        times = list(self.latest.values())
        return None if any(t is None for t in times) else min(t for t in times if t is not None)


@dataclass(frozen=True)
class ServedProbe:
    """A learned probe the governance log made production for a model family, under its registry version."""

    version: str
    probe: RiskProbe


class RiskTracker:
    """Folds a trace's steps and its completion into risk reports and alerts.

    A family's FINAL score comes from its learned probe where governance promoted one (``offer``, taken up between
    batches by ``take_offers``) and the trace was followed by it from its first step; else from the hand-set policy,
    which stays the fallback. The hand-set flags (non-finite states, loops, ...) are raised either way, and a report
    names what judged it: the probe's registry version or the policy's name."""

    def __init__(self, policies: Mapping[str, RiskPolicy]) -> None:
        self.policies = dict(policies)
        self.probes: dict[str, ServedProbe] = {}
        self._offers: dict[str, ServedProbe | None] = {}
        self._offers_lock = threading.Lock()

    def offer(self, family: str, served: ServedProbe | None) -> None:
        """From any thread: serve ``served`` for ``family`` from the next batch on (None: back to the hand-set)."""
        with self._offers_lock:
            self._offers[family] = served

    def take_offers(self) -> list[str]:
        """Between batches: the offered probes start serving; the families that changed."""
        with self._offers_lock:
            offers, self._offers = self._offers, {}
        for family, served in offers.items():
            if served is None:
                self.probes.pop(family, None)
            else:
                self.probes[family] = served
        return sorted(offers)

    def policy(self, model_version: str) -> RiskPolicy:
        return policy_for(self.policies, model_version)

    def on_step(self, state: Mapping[str, Any] | None, step: Mapping[str, Any], offset: int, now_us: int) -> Fold:
        return self.on_steps(state, [(step, offset)], now_us)

    def on_steps(
        self, state: Mapping[str, Any] | None, steps: Sequence[tuple[Mapping[str, Any], int]], now_us: int
    ) -> Fold:
        """Fold one trace's steps (with their input offsets, in the order read): the outcome of ``on_step`` step by
        step, with the trace's ``TraceRisk`` built once and stored once (the state round-trips exactly, so this is
        the same result; building and storing it per step was most of the fold's cost). ``duplicates`` counts
        the steps skipped as already folded."""
        st = dict(state or {})
        out = Fold(st)
        risk: TraceRisk | None = None
        for step, offset in steps:
            if offset <= st.get("step_offset", -1) or st.get("final"):
                out.duplicates += 1
                continue
            try:
                check_step_joins(st.get("shape"), step)
            except FoldError as e:
                out.rejected[offset] = e
                continue
            st["shape"] = list(step_shape(step))
            model = str(step["model_version"])
            if risk is None or model != st.get("model_version"):
                if risk is not None:
                    st["risk"] = risk.to_state()
                risk = TraceRisk(self.policy(model), st.get("risk"))
            policy = risk.policy
            assessment = risk.update(step)
            self._follow_probe(st, step)
            st.update(
                model_version=model,
                request_id=step["request_id"],
                trace_id=step["trace_id"],
                step_offset=offset,
                last_step=int(step["step"]),
                seen_us=now_us,
                event_us=max(int(st.get("event_us", 0)), int(step["emitted_at_us"])),
            )
            self._raise_early(st, assessment, policy, now_us, out)
            pending = st.get("completion")
            if pending is not None and risk.steps >= pending["token_count"]:
                st["risk"] = risk.to_state()
                self._finish(st, pending, policy, now_us, out)
                risk = None
        if risk is not None:
            st["risk"] = risk.to_state()
        return out

    def on_block(self, state: Mapping[str, Any] | None, cols: StepColumns, offset: int, now_us: int) -> Fold:
        """Fold one block of a trace's steps (one StepBlock record, read at input ``offset``): the outcome of
        ``on_steps`` over the block's rows, had each its own offset, with the block's offset stored. A block at or
        below the stored offset is a replay (``duplicates``: all its steps); one whose shape does not join the
        trace's is rejected whole. The rows are folded with numpy (``TraceRisk.update_block``), halting only at the
        rows where the severity may rise (assessed there, as ``on_steps`` assesses every step) and at the step that
        completes a pending completion."""
        st = dict(state or {})
        out = Fold(st)
        n = len(cols)
        if offset <= st.get("step_offset", -1) or st.get("final"):
            out.duplicates = n
            return out
        if not n:
            return out
        try:
            check_block_joins(st.get("shape"), cols)
        except FoldError as e:
            out.rejected[offset] = e
            return out
        st["shape"] = list(block_shape(cols))
        model = cols.model_version
        risk = TraceRisk(self.policy(model), st.get("risk"))
        policy = risk.policy
        probe = self.probes.get(family_of(model)) is not None
        event_us = int(st.get("event_us", 0))
        i = 0
        while i < n:
            pending = st.get("completion")
            stop = n if pending is None else min(n, i + max(1, int(pending["token_count"]) - risk.steps))
            end, rise = risk.update_block(cols, i, stop, above=st.get("alerted"))
            if probe:
                for r in range(i, end):
                    self._follow_probe(st, cols.row(r))
            event_us = max(event_us, int(np.maximum.reduce(cols.emitted_at_us[i:end])))
            st.update(
                model_version=model,
                request_id=cols.request_id,
                trace_id=cols.trace_id,
                step_offset=offset,
                last_step=int(cols.step[end - 1]),
                seen_us=now_us,
                event_us=event_us,
            )
            if rise:
                self._raise_early(st, risk.assess(), policy, now_us, out)
            i = end
            if pending is not None and risk.steps >= pending["token_count"]:
                st["risk"] = risk.to_state()
                self._finish(st, pending, policy, now_us, out)
                out.duplicates += n - end  # steps after the last one the completion counts: the trace is final
                return out
        st["risk"] = risk.to_state()
        return out

    def on_completion(
        self, state: Mapping[str, Any] | None, completion: Mapping[str, Any], offset: int, now_us: int
    ) -> Fold:
        """The FINAL report, once the trace's steps have all arrived: the completion travels on another topic and
        can overtake its last steps, in which case it waits in the state until they are folded."""
        st = dict(state or {})
        if offset <= st.get("completion_offset", -1):
            return Fold(st, duplicates=1)
        ident = _completion_id(completion)
        if st.get("final") or "completion" in st:
            if st.get("completion_id", ident) != ident:  # the same completion forwarded again is a duplicate
                raise FoldError(
                    f"a second, different completion for trace {completion['trace_id']} "
                    f"({ident}; the trace has {st['completion_id']})"
                )
            return Fold(st, duplicates=1)
        model = str(completion["model_version"])
        st.setdefault("trace_id", completion["trace_id"])
        st.setdefault("request_id", completion["request_id"])
        st.setdefault("model_version", model)
        expected = int(completion["token_count"])
        pending = {
            "token_count": expected,
            "finish_reason": completion.get("finish_reason"),
            "error": completion.get("error"),
        }
        event_us = max(int(st.get("event_us", 0)), int(completion.get("completed_at_us") or 0))
        st.update(completion=pending, completion_offset=offset, completion_id=ident, seen_us=now_us, event_us=event_us)
        out = Fold(st)
        if int(st.get("risk", {}).get("steps", 0)) >= expected:
            self._finish(st, pending, self.policy(model), now_us, out)
        return out

    def _raise_early(
        self, st: dict[str, Any], assessment: Assessment, policy: RiskPolicy, now_us: int, out: Fold
    ) -> None:
        """An EARLY report and alert where the trace's severity rises above what it was alerted at."""
        severity = assessment.severity(policy)
        if severity is not None and SEVERITY_RANK[severity] > SEVERITY_RANK[st.get("alerted")]:
            st["alerted"] = severity
            report = self._report(st, assessment, policy.name, "EARLY", now_us)
            out.reports.append(report)
            out.alerts.append(self._alert(report, severity, policy.name))

    def _follow_probe(self, st: dict[str, Any], step: Mapping[str, Any]) -> None:
        """Keep the probe's running sums of a trace its family's probe has followed from the first step."""
        served = self.probes.get(family_of(str(step["model_version"])))
        if served is None:
            return
        sums = st.get("probe")
        if sums is None:
            if int(step["step"]) != 0 or st.get("probe_missed"):
                st["probe_missed"] = True  # the probe came mid-trace: the hand-set policy judges this one
                return
            sums = {"version": served.version, "sums": None}
        acc = FeatureSums(served.probe.num_layers, sums["sums"], served.probe.sketch_dim)
        acc.update(step)
        st["probe"] = {"version": sums["version"], "sums": acc.to_state()}

    def _probe_verdict(self, st: Mapping[str, Any], steps: int) -> tuple[ServedProbe, float] | None:
        """The probe's P(wrong) for a finished trace it followed whole, by the version that followed it."""
        kept = st.get("probe")
        served = self.probes.get(family_of(str(st["model_version"])))
        if kept is None or served is None or served.version != kept["version"]:
            return None
        acc = FeatureSums(served.probe.num_layers, kept["sums"], served.probe.sketch_dim)
        if acc.n != steps:
            return None
        return served, float(served.probe.probability(acc.features())[0])

    def _finish(self, st: dict[str, Any], done: Mapping[str, Any], policy: RiskPolicy, now_us: int, out: Fold) -> None:
        assessment = TraceRisk(policy, st.get("risk")).assess()
        if done.get("finish_reason") == "ERROR":
            assessment = Assessment(
                assessment.score,
                (*assessment.flags, "generation_error"),
                assessment.blamed_layers,
                f"generation failed: {done.get('error')}",
                assessment.steps,
            )
        severity = assessment.severity(policy)
        judge = policy.name
        verdict = self._probe_verdict(st, assessment.steps)
        if verdict is not None:
            served, p_wrong = verdict
            learned = served.probe.severity(p_wrong)
            flagged = severity if assessment.flags else None  # the hand-set flags still raise their own alerts
            severity = max(learned, flagged, key=lambda s: SEVERITY_RANK[s])
            assessment = Assessment(
                round(p_wrong, 6),
                assessment.flags,
                assessment.blamed_layers,
                f"learned probe: P(wrong) {p_wrong:.2f}; {assessment.reason}",
                assessment.steps,
            )
            judge = served.version
        report = self._report(st, assessment, judge, "FINAL", now_us)
        out.reports.append(report)
        if severity is not None:
            out.alerts.append(self._alert(report, severity, judge))
        st["final"] = True
        # a finished trace keeps what recognises replays
        for kept in ("risk", "completion", "probe", "probe_missed", "shape"):
            st.pop(kept, None)

    @staticmethod
    def _report(st: Mapping[str, Any], a: Assessment, judge: str, stage: str, now_us: int) -> dict[str, Any]:
        return {
            "trace_id": st["trace_id"],
            "request_id": st["request_id"],
            "model_version": st["model_version"],
            "stage": stage,
            "step": st.get("last_step") if stage == "EARLY" else None,
            "score": a.score,
            "flags": list(a.flags),
            "blamed_layers": list(a.blamed_layers),
            "reason": a.reason,
            "steps": a.steps,
            "policy": judge,
            "produced_at_us": now_us,
        }

    @staticmethod
    def _alert(report: Mapping[str, Any], severity: str, judge: str) -> dict[str, Any]:
        keys = (
            "trace_id",
            "request_id",
            "model_version",
            "stage",
            "score",
            "flags",
            "blamed_layers",
            "reason",
            "produced_at_us",
        )
        return {**{k: report[k] for k in keys}, "severity": severity, "policy": judge}


def _completion_id(completion: Mapping[str, Any]) -> str:
    """What tells two completions of one trace apart: a repartition forwards the same one again, a faulty producer
    sends another."""
    return f"{completion['request_id']}/{completion['token_count']}/{completion.get('completed_at_us')}"
