"""Progressive delivery under steady traffic: issue 28's targets, measured on a real deployment.

One private broker (or --bootstrap), the governance genesis of the embedded default model, and the real processes:
`evostream serve --governed` (follows production and the running rollout), `evostream process` (risk alerts) and
`evostream rollout control` (the controller that judges each window and writes the steps). A traffic thread sends
the task suite's held-out prompts at a steady rate through Kafka; a grader tails evo.completions and labels every
answer (canary and shadow answers too) RIGHT or WRONG against the suite's expected answer on evo.outcomes, as an
automatic grader would. Then:

1. **Injected regression.** A faulted candidate (bench/variants.py: 70% weight noise; validated by a smoke test only,
   so it reaches the rollout) is rolled out, twice per rep: with a shadow phase first, and with
   none (straight to the first canary step). Measured: seconds from RolloutStarted to the automatic RolloutAborted,
   the step it was caught at, and the share of the run's requests the candidate answered.
2. **Healthy candidates.** A new healthy candidate (2% weight noise: a new version that answers as the incumbent)
   per run goes through the whole plan; counted: runs that completed, false aborts, and time to completion against
   the schedule (shadow + one window per step + the clean windows at 100%).
Shadowing's cost to production latency is measured on its own by ``bench.shadow``.

Prints one line per run, then the spread over runs, and the command that reproduces it."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.broker import bench_broker
from bench.procs import stop
from bench.stats import spread
from bench.variants import FAULTED_NOISE, HEALTHY_NOISE, Variant, build, register
from evostream.consumers.governance.keys import ActorKey
from evostream.consumers.governance.log import GovernanceLog
from evostream.consumers.governance.service import Governance, load_actor
from evostream.core.artifacts import ArtifactStore
from evostream.core.bus.consumer import EventConsumer
from evostream.core.clock import now_us
from evostream.core.settings import Settings, load_settings
from evostream.models.default_model import MODEL_ID
from evostream.models.suite.evaluate import eval_set
from evostream.producers.client import InferenceClient
from evostream.schemas.catalog import COMPLETIONS
from evostream.schemas.codec import RecordCodec
from evostream.schemas.errors import DecodeError
from evostream.stream_processors.risk.outcomes import outcome
from evostream.views.governance import anchor_file, checkpoints_path
from evostream.wiring.feedback import publish_outcomes
from evostream.wiring.governed import ensure_genesis

MAX_NEW_TOKENS = 24


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Sent:
    request_id: str
    expected: str
    sent_us: int
    latency_ms: float | None = None
    version: str = ""


@dataclass
class Traffic:
    """Requests at a steady rate from a background thread; each reply's latency and answering version kept."""

    bootstrap: str
    rate: float
    sent: list[Sent] = field(default_factory=list)
    expected: dict[str, str] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        self._stop.clear()
        t = threading.Thread(target=self._run, name="traffic", daemon=True)
        t.start()
        self._threads = [t]

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(120)

    def _run(self) -> None:
        pool = list(eval_set(50))
        with InferenceClient(self.bootstrap, max_in_flight=512) as client:
            waiters: list[threading.Thread] = []
            period = 1.0 / self.rate
            nxt = time.monotonic()
            i = 0
            while not self._stop.is_set():
                ex = pool[i % len(pool)]
                i += 1
                rid = uuid.uuid4().hex
                self.expected[rid] = ex.answer
                s = Sent(rid, ex.answer, now_us())
                self.sent.append(s)
                reply = client.submit(ex.prompt, max_new_tokens=MAX_NEW_TOKENS, request_id=rid)
                w = threading.Thread(target=self._await, args=(reply, s), daemon=True)
                w.start()
                waiters.append(w)
                nxt += period
                self._stop.wait(max(0.0, nxt - time.monotonic()))
            for w in waiters:
                w.join(120)

    @staticmethod
    def _await(reply: Any, s: Sent) -> None:
        try:
            rec = reply.result(120)
        except Exception as e:  # a lost or late answer is counted as such, not fatal
            say(f"request {s.request_id} not answered: {e}")
            return
        s.latency_ms = (now_us() - s.sent_us) / 1000
        s.version = rec["model_version"]


class Grader(threading.Thread):
    """Labels every answer on evo.completions (ANSWER and SHADOW) against the suite's expected answer."""

    def __init__(self, bootstrap: str, expected: dict[str, str]) -> None:
        super().__init__(name="grader", daemon=True)
        self.bootstrap, self.expected = bootstrap, expected
        self.halt = threading.Event()
        self.labelled = 0
        self.undecodable = 0

    def run(self) -> None:
        codec = RecordCodec("Completion")
        consumer = EventConsumer(self.bootstrap, f"bench-grader-{uuid.uuid4().hex[:8]}", [COMPLETIONS])
        try:
            while not self.halt.is_set():
                out = []
                for msg in consumer.poll_batch(500, timeout_s=0.5):
                    try:
                        c = codec.decode(msg.value() or b"")
                    except DecodeError:  # someone else's poison on the shared topic: not an answer to grade
                        self.undecodable += 1
                        continue
                    want = self.expected.get(c["request_id"])
                    if want is None or c["error"] or c["finish_reason"] == "ESCALATED":
                        continue
                    label = "RIGHT" if c["output_text"].strip() == want else "WRONG"
                    out.append(
                        outcome(
                            c["trace_id"],
                            c["model_version"],
                            label,
                            source="SUITE",
                            actor="bench-grader",
                            recorded_at_us=now_us(),
                        )
                    )
                if out:
                    publish_outcomes(self.bootstrap, out)
                    self.labelled += len(out)
        finally:
            consumer.close()


@dataclass
class Deployment:
    bootstrap: str
    settings: Settings
    env: dict[str, str]
    tmp: Path
    admin: Governance
    approver: Governance
    store: ArtifactStore
    procs: list[tuple[subprocess.Popen[bytes], Path, str]] = field(default_factory=list)

    def spawn(self, what: str, args: list[str], ready: str) -> None:
        log = self.tmp / f"{what}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "evostream.cli", *args], stdout=out, stderr=subprocess.STDOUT, env=self.env
            )
        self.procs.append((proc, log, what))
        deadline = time.monotonic() + 300
        while not re.search(ready.encode(), log.read_bytes()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{what} did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        for proc, log, what in reversed(self.procs):
            stop(proc, log, what)


@contextmanager
def deployment(bootstrap: str, tick_s: float) -> Iterator[Deployment]:
    tmp = Path(tempfile.mkdtemp(prefix="evostream-bench-rollout-"))
    run = uuid.uuid4().hex[:8]
    env = {
        **os.environ,
        "EVOSTREAM_BOOTSTRAP_SERVERS": bootstrap,
        "EVOSTREAM_GOVERNANCE_DIR": str(tmp / "gov"),
        "EVOSTREAM_ARTIFACTS_DIR": str(tmp / "art"),
        "EVOSTREAM_GOVERNANCE_TOPIC": f"bench-governance-{run}",
        "EVOSTREAM_PROCESSORS_APP_ID": f"bench-rollout-{run}",
    }
    settings = load_settings(
        bootstrap_servers=bootstrap,
        governance_dir=tmp / "gov",
        artifacts_dir=tmp / "art",
        governance_topic=env["EVOSTREAM_GOVERNANCE_TOPIC"],
    )
    ensure_genesis(settings, bootstrap, say)
    glog = GovernanceLog(bootstrap, topic=settings.governance_topic)
    keys = settings.governance_dir / "keys"
    admin = load_actor(glog, keys, "admin", checkpoints=checkpoints_path(settings), anchor=anchor_file(settings))
    key = ActorKey.generate()
    admin.enroll("bench-approver", key.public_hex, key.key_id, ["approver"], reason="bench: the second pair of eyes")
    approver = Governance(glog, key, "bench-approver")
    dep = Deployment(bootstrap, settings, env, tmp, admin, approver, ArtifactStore(settings.artifacts_dir))
    try:
        dep.spawn("serve", ["serve", "--governed", MODEL_ID, "--log-level", "INFO"], r"serving \S+ \(")
        dep.spawn("process", ["process", "--loglevel", "INFO"], r"Worker\]: Ready")
        dep.spawn(
            "control", ["rollout", "control", "--model", MODEL_ID, "--tick-s", str(tick_s)], r"following the rollouts"
        )
        yield dep
    finally:
        dep.stop()
        glog.close()


@dataclass
class RunResult:
    kind: str
    status: str
    seconds: float
    caught_at: str
    answered_share: float
    requests: int
    steps: list[tuple[int, int, float]]


def rollout_run(dep: Deployment, traffic: Traffic, variant: Variant, plan: dict[str, Any], kind: str) -> RunResult:
    """Roll ``variant`` out under ``plan`` while the traffic runs; wait for its end (completed or aborted)."""
    register(dep.admin, dep.approver, dep.store, variant, MODEL_ID)
    first = len(traffic.sent)
    ev = dep.admin.start_rollout(MODEL_ID, variant.version, plan, {}, reason=f"bench: {kind}")
    rid = ev.payload["rollout_id"]
    started = ev.occurred_at_us
    windows = 1 + len(plan["steps"]) + plan["clean_cycles"]
    budget = windows * max(plan["step_s"], 1.0) * 4 + 120
    deadline = time.monotonic() + budget
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        state = dict(dep.admin.state().registry.rollouts[rid])
        if state["status"] != "running":
            break
        time.sleep(0.5)
    time.sleep(3)  # the answers in flight at the end come in
    end = state["history"][-1]["at_us"] if state.get("history") else now_us()
    seconds = (end - started) / 1e6
    during = [s for s in traffic.sent[first:] if s.sent_us <= end + 2_000_000]
    by_candidate = sum(1 for s in during if s.version == variant.version)
    steps = [
        (h["step"], h["weight"], (h["at_us"] - started) / 1e6)
        for h in state["history"]
        if h["type"] == "RolloutStepped"
    ]
    last_step = steps[-1][0] if steps else -1
    caught = "shadow" if last_step < 0 else f"step {last_step} ({plan['steps'][last_step]}%)"
    status = state.get("status", "timeout")
    if status == "running":
        dep.admin.abort_rollout(MODEL_ID, rid, {}, automatic=False, reason="bench: out of time")
        status = "timeout"
    return RunResult(kind, status, seconds, caught, by_candidate / max(1, len(during)), len(during), steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=20.0, help="requests per second")
    ap.add_argument("--step-s", type=float, default=60.0, help="each window's seconds (regressed runs)")
    ap.add_argument(
        "--healthy-step-s", type=float, default=None, help="windows of the healthy runs (default: --step-s)"
    )
    ap.add_argument("--steps", default="1,5,25,50,100")
    ap.add_argument("--min-samples", type=int, default=20)
    ap.add_argument("--shadow-share", type=float, default=0.1)
    ap.add_argument("--clean-cycles", type=int, default=3)
    ap.add_argument("--regressed-runs", type=int, default=2, help="faulted candidates, with and without shadow each")
    ap.add_argument("--healthy-runs", type=int, default=10)
    ap.add_argument("--tick-s", type=float, default=1.0, help="the controller's tick")
    ap.add_argument("--bootstrap", default=None)
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    steps = [int(s) for s in args.steps.split(",")]
    healthy_s = args.healthy_step_s or args.step_s

    def plan(step_s: float, shadow: bool) -> dict[str, Any]:
        return {
            "steps": steps,
            "step_s": step_s,
            "min_samples": args.min_samples,
            "shadow_share": args.shadow_share,
            "shadow_s": step_s if shadow else 0.0,
            "clean_cycles": args.clean_cycles,
        }

    results: list[RunResult] = []
    work = Path(tempfile.mkdtemp(prefix="evostream-bench-variants-"))
    with bench_broker(args.bootstrap) as bootstrap, deployment(bootstrap, args.tick_s) as dep:
        traffic = Traffic(bootstrap, args.rate)
        grader = Grader(bootstrap, traffic.expected)
        grader.start()
        traffic.start()
        try:
            time.sleep(10)  # warm: the processors' first windows, the service's first batches
            for k in range(args.regressed_runs):
                for with_shadow in (True, False):
                    v = build(work / f"faulted-{k}-{with_shadow}", FAULTED_NOISE, seed=100 + 2 * k + with_shadow)
                    kind = "regressed, shadow first" if with_shadow else "regressed, no shadow"
                    r = rollout_run(dep, traffic, v, plan(args.step_s, with_shadow), kind)
                    results.append(r)
                    say(json.dumps(r.__dict__))
            for k in range(args.healthy_runs):
                v = build(work / f"healthy-{k}", HEALTHY_NOISE, seed=200 + k)
                r = rollout_run(dep, traffic, v, plan(healthy_s, True), "healthy")
                results.append(r)
                say(json.dumps(r.__dict__))
        finally:
            traffic.stop()
            grader.halt.set()
            grader.join(30)
    report(args, results, healthy_s)


def report(args: argparse.Namespace, results: list[RunResult], healthy_s: float) -> None:
    print(f"rollout benchmark: {args.rate:g} requests/s, steps {args.steps}, {os.cpu_count()} CPUs, default model")
    for kind in ("regressed, shadow first", "regressed, no shadow"):
        rs = [r for r in results if r.kind == kind]
        if rs:
            aborted = sum(r.status == "aborted" for r in rs)
            print(
                f"  {kind} (windows {args.step_s:g} s): aborted {aborted}/{len(rs)}; seconds to abort "
                f"{spread([r.seconds for r in rs], '.1f')}; caught at {', '.join(r.caught_at for r in rs)}; share of "
                f"requests answered by the candidate {spread([100 * r.answered_share for r in rs], '.2f')} %"
            )
    hs = [r for r in results if r.kind == "healthy"]
    if hs:
        windows = 1 + len(args.steps.split(",")) + args.clean_cycles
        done = [r for r in hs if r.status == "completed"]
        print(
            f"  healthy (windows {healthy_s:g} s, schedule {windows} windows = {windows * healthy_s:g} s): completed "
            f"{len(done)}/{len(hs)}, false aborts {sum(r.status == 'aborted' for r in hs)}; seconds to completion "
            f"{spread([r.seconds for r in done], '.1f') if done else '-'}"
        )
    print(
        f"# reproduce: python -m bench.rollout --rate {args.rate:g} --step-s {args.step_s:g} --healthy-step-s "
        f"{healthy_s:g} --steps {args.steps} --min-samples {args.min_samples} --shadow-share {args.shadow_share:g} "
        f"--clean-cycles {args.clean_cycles} --regressed-runs {args.regressed_runs} --healthy-runs "
        f"{args.healthy_runs}"
    )


if __name__ == "__main__":
    main()
