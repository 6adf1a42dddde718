"""Stream processors on the real broker: step events per second through the Faust worker (all three agents), the
workers' CPU per step event, how long an alert takes from the offending step event with the worker idle and under
load, the scale-out over several workers, and a PyFlink peer on the same records.

Input: the default model's family (``evostream/t5-tiny-suite@bench``), so the worker judges with the shipped,
calibrated risk policy and its z-score path runs on every step: steps are shaped like the model (its policy's layers
and heads) with per-layer norms and per-head signals drawn around the policy's own baselines, token entropies below
its threshold, and completions carrying 384-d prompt embeddings and their token ids, so the drift agent builds its
reference and tests windows (MMD permutation test, vocabulary nulls, PSI). Steps travel as the producer sends them to
the processors: StepBlock records on evo.step-blocks, ``--block`` steps of one trace each (what the producer's emitter
holds of one trace up to its block window; bench.block_sizes measures that for the default model).

Throughput: N step events (T traces) and T completions are produced first; then fresh workers (``evostream
process``, their own consumer group) start, and the clock runs from the first one's "Ready" log line until ALL THREE
agents are done with the input:
- risk: the FINAL RiskReport of every trace (its ``produced_at_us``);
- profiling: the first moment every step is accounted for, each window counted once: by its ProfileSnapshot
  once published, else by the latest ``profile-models`` changelog write of that window (the message's timestamp);
- drift: the write to the ``drift-models`` changelog whose state counts every completion (reference, reported
  windows, open window, skipped).
An agent that never gets there ends the bench with an error naming it. Those are the agents' own records of what
they have folded, timestamped by the worker when it wrote them (same machine, same clock as the "Ready" line), so
how long this script takes to read them does not count. CPU per step event: the workers' user + system CPU time
(sampled from /proc every 20 ms from their start, read off at the Ready line and at the last agent's stamp) over
the step events.

Latency: the alert's arrival at a consumer that blocks on the next message (it returns as soon as one arrives)
minus the NaN step event's ``emitted_at_us``: first with the workers caught up and idle, then while a producer
thread offers healthy traffic (traces as long as the input's, in blocks of ``--block``, drawn before the clock) at
``--load`` times the throughput just measured. The NaN step is the last of its block, so the producer's coalescing
window is not in it.

Scale-out: ``--workers 1,2,4`` runs each count (one app, one consumer group, the partitions shared out), the counts
interleaved within each run; ``--cluster`` runs on the local three-node cluster on loopback instead of one broker.
Peer: ``--peer`` copies the input to a topic of its own and, once the workers are stopped, runs the PyFlink job of
``bench/flink_peer.py`` (thread mode, parallelism 1: the risk fold keyed by trace, on the same StepBlock bytes;
set up with ``bash bench/pyflink_env.sh``).

A new worker reads the topics from their start, so each run starts a private broker or cluster (unless --bootstrap
or a running local stack is given: then only --runs 1, and only meaningful on a broker holding nothing else).

Run: python -m bench.processors [--steps 100000 --traces 500 --alerts 60 --load 0.5 --runs 3 --block 16
     --workers 1 --cluster --peer]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench.broker import bench_broker
from bench.cpu import CpuMeter
from bench.flink_peer import run_peer
from bench.procs import stop
from bench.stats import pct, spread
from evostream.core.bus.admin import ensure_topics
from evostream.core.bus.consumer import EventConsumer
from evostream.core.bus.producer import EventProducer
from evostream.core.settings import load_settings
from evostream.core.stack import LocalStack
from evostream.core.stack.cluster import LocalCluster
from evostream.schemas.blocks import block_record, from_steps
from evostream.schemas.catalog import ALERTS, CATALOG, COMPLETIONS, PROFILES, RISK, STEP_BLOCKS
from evostream.schemas.codec import RecordCodec
from evostream.schemas.samples import generation_step
from evostream.schemas.tensors import pack_f32, step_heads, step_layers
from evostream.stream_processors.drift.tracker import DriftWindows
from evostream.stream_processors.drift.tracker import table_name as drift_table
from evostream.stream_processors.profiling.tracker import table_name as profile_table
from evostream.stream_processors.profiling.window import ProfilePolicy
from evostream.stream_processors.risk.policy import RiskPolicy, load_policies, policy_for

VERSION = "evostream/t5-tiny-suite@bench"
BLOCK, COMPLETION = RecordCodec("StepBlock"), RecordCodec("Completion")
RISK_REPORT, ALERT, SNAPSHOT = RecordCodec("RiskReport"), RecordCodec("RiskAlert"), RecordCodec("ProfileSnapshot")


class Traffic:
    """Healthy steps and completions of the default model's shape, around its risk policy's baselines."""

    def __init__(self, policy: RiskPolicy, seed: int, block: int = 1) -> None:
        heads = np.asarray(policy.heads.mean, dtype=np.float64)
        ratio = np.asarray(policy.norm_ratio.mean, dtype=np.float64)
        if heads.ndim != 3 or ratio.ndim != 2 or ratio.shape[1] != heads.shape[1] - 1:
            raise SystemExit(f"risk policy {policy.name} has no z-score baselines to shape the bench's steps on")
        self.policy = policy
        self.block = block
        """Steps per StepBlock: what the producer's block window holds of one trace."""
        floor = policy.z_std_floor
        self.heads_mu, self.heads_sd = heads, np.maximum(np.asarray(policy.heads.std), floor)
        self.ratio_mu, self.ratio_sd = ratio, np.maximum(np.asarray(policy.norm_ratio.std), floor)
        self.layers, self.heads = heads.shape[1], heads.shape[2]
        self.rng = np.random.default_rng(seed)
        self.centers = self.rng.normal(size=(6, 384))  # six intents, like the task suite

    def step(self, trace: str, i: int, t0_us: int, salt: int) -> dict[str, Any]:
        b = min(self.policy.bucket(i), len(self.heads_mu) - 1)
        z = self.rng.normal(0.0, 0.5, size=(self.layers, self.heads))  # half a baseline sd: healthy
        heads = np.exp(self.heads_mu[b] + z * self.heads_sd[b])
        l2 = np.empty(self.layers)
        l2[0] = 20.0 * np.exp(self.rng.normal(0.0, 0.05))
        l2[1:] = l2[0] * np.exp(self.ratio_mu[b] + self.rng.normal(0.0, 0.5, self.layers - 1) * self.ratio_sd[b])
        rec = generation_step(i, trace, self.layers, self.heads, t0_us=t0_us)
        rec.update(
            model_version=VERSION,
            token_id=(i * 37 + salt * 11) % 300,
            entropy_bits=float(abs(self.rng.normal(0.0, self.policy.entropy_bits / 4))),
            head_attention_entropy=pack_f32(heads.tolist()),
            layer_hidden_l2=pack_f32(l2.tolist()),
            layer_hidden_maxabs=pack_f32((l2 * 0.3).tolist()),
            attention_signal="OUTPUT_NORM",
        )
        return rec

    def encode_block(self, steps: list[dict[str, Any]]) -> bytes:
        """One StepBlock record of one trace's consecutive steps, flushed now."""
        return BLOCK.encode(block_record(from_steps(steps), time.time_ns() // 1000))

    def z_scores(self) -> tuple[float, float]:
        """Largest |z| of the head signals and of the layer-norm ratios over a trace of these steps, computed with the
        policy's baselines exactly as the risk agent does; SystemExit where a baseline does not apply (the agent
        would then skip its z-score tests)."""
        zh = zn = 0.0
        for i in range(12):
            rec = self.step("z-check", i, 0, 3)
            heads = self.policy.head_z(i, step_heads(rec).astype(np.float64))
            norms = self.policy.norm_z(i, step_layers(rec, "layer_hidden_l2").astype(np.float64))
            if heads is None or norms is None:
                raise SystemExit(f"the bench's steps do not fit the z-score baselines of {self.policy.name}")
            zh, zn = max(zh, float(np.abs(heads).max())), max(zn, float(np.abs(norms).max()))
        return zh, zn

    def nan_step(self, trace: str, i: int) -> dict[str, Any]:
        bad = self.step(trace, i, 0, 1)
        bad.update(
            layer_nonfinite=[0] + [1] * (self.layers - 1),
            layer_hidden_l2=pack_f32([1.0] + [float("nan")] * (self.layers - 1)),
        )
        return bad

    def completion(self, trace: str, n: int, salt: int) -> dict[str, Any]:
        emb = self.centers[salt % len(self.centers)] + self.rng.normal(0.0, 0.5, 384)
        return {
            "trace_id": trace,
            "request_id": trace,
            "reply_to": "",
            "tenant": "bench",
            "model_version": VERSION,
            "output_text": "",
            "token_count": n,
            "output_token_ids": [(i * 37 + salt * 11) % 300 for i in range(n)],
            "prompt_token_count": 8,
            "prompt_surprisal_bits": None,
            "prompt_embedding": (emb / np.linalg.norm(emb)).tolist(),
            "finish_reason": "STOP",
            "error": None,
            "timings": {"queue_us": 0, "prefill_us": 0, "decode_us": 0, "total_us": 0},
            "completed_at_us": time.time_ns() // 1000,
        }


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    log: Path
    app_id: str
    ready_us: int

    def stop(self) -> None:
        stop(self.proc, self.log, "worker")


def start_workers(bootstrap: str, tmp: Path, n: int) -> tuple[list[Worker], CpuMeter]:
    """``n`` worker processes of one app (one consumer group, the partitions shared out), each with its own state
    directory, started together; they return once each has logged Ready, with the meter of their CPU time."""
    app_id = f"bench-processors-{uuid.uuid4().hex[:8]}"
    started = []
    for k in range(n):
        log = tmp / f"{app_id}-{k}.log"
        env = {
            **os.environ,
            "EVOSTREAM_BOOTSTRAP_SERVERS": bootstrap,
            "EVOSTREAM_PROCESSORS_APP_ID": app_id,
            "EVOSTREAM_PROCESSORS_DIR": str(tmp / f"{app_id}-{k}"),
        }
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "evostream.cli", "process", "--loglevel", "INFO"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        started.append((proc, log))
    pids = [proc.pid for proc, _ in started]
    meter = CpuMeter(lambda: pids, period_s=0.02)  # from the start, so the CPU at Ready is known too
    meter.start()
    workers = []
    for proc, log in started:
        ready_line = rb"\[([\d-]+ [\d:,]+)\] \[\d+\] \[INFO\] \[\^Worker\]: Ready"
        while (m := re.search(ready_line, log.read_bytes())) is None:
            if proc.poll() is not None:
                for other, _ in started:
                    other.kill()
                raise SystemExit(f"worker died:\n{log.read_text()[-2000:]}")
            time.sleep(0.05)
        ready = datetime.strptime(m[1].decode(), "%Y-%m-%d %H:%M:%S,%f").timestamp()  # the worker logs local time
        workers.append(Worker(proc, log, app_id, int(ready * 1e6)))
    return workers, meter


@dataclass
class Throughput:
    steps: int
    completions: int
    seconds: float
    done_s: dict[str, float]
    policies: set[str]
    healthy_alerts: int
    cpu_s: float
    """The workers' CPU seconds from the first Ready to the last agent done."""
    blocks: int

    @property
    def cpu_us_per_step(self) -> float:
        return self.cpu_s * 1e6 / self.steps

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.seconds


@dataclass
class Progress:
    """What the three agents have published about the run's input, with the worker's timestamps (µs)."""

    finals: dict[str, int] = field(default_factory=dict)
    policies: set[str] = field(default_factory=set)
    alerts: int = 0
    events: list[tuple[int, str, int, int]] = field(default_factory=list)
    """(time, "snapshot" | "profile" | "drift", count, window's first step µs): a snapshot holds the steps of the
    window it closed, a profile state the steps of its open window so far, a drift state the completions seen."""

    def done_at(self, kind: str, target: int) -> int | None:
        """When the agent had accounted for ``target`` steps (profile) or completions (drift); None if never.

        Profiling, in time order: every snapshot adds the steps of the window it closed; the latest state write
        holds the steps of the one open window, until a snapshot of that window (same first step time) closes it.
        (Windows used to be told apart by their first step time alone: two windows that began at the same
        microsecond were counted as one, and the run never finished.)"""
        closed = 0
        open_start, open_steps = None, 0
        for at, k, n, start in sorted(self.events):
            if kind == "drift" and k == "drift" and n >= target:
                return at
            if kind != "profile" or k not in ("snapshot", "profile"):
                continue
            if k == "snapshot":
                closed += n
                if start == open_start:
                    open_start, open_steps = None, 0
            else:
                open_start, open_steps = start, n
            if closed + open_steps >= target:
                return at
        return None


def read_progress(bootstrap: str, workers: list[Worker], traces: set[str], progress: Progress, until: Any) -> None:
    settings = load_settings()  # the worker runs with the same settings: its tables are named after them
    worker = workers[0]
    profile_log = f"{worker.app_id}-{profile_table(ProfilePolicy(window_s=settings.profile_window_s))}-changelog"
    drift_windows = DriftWindows(settings.drift_reference_size, settings.drift_window_size)
    topics = [RISK, ALERTS, PROFILES, profile_log, f"{worker.app_id}-{drift_table(drift_windows)}-changelog"]
    key = VERSION.encode()
    with EventConsumer(bootstrap, f"bench-{uuid.uuid4().hex}", topics) as consumer:
        deadline = time.monotonic() + 3600
        while not until(progress) and time.monotonic() < deadline:
            for w in workers:
                if w.proc.poll() is not None:
                    raise SystemExit(f"worker died:\n{w.log.read_text()[-2000:]}")
            for m in consumer.poll_batch(2000, 0.5):
                topic, value = m.topic(), m.value() or b""
                if topic == RISK:
                    r = RISK_REPORT.decode(value)
                    if r["stage"] == "FINAL" and r["trace_id"] in traces:
                        progress.finals[r["trace_id"]] = r["produced_at_us"]
                        progress.policies.add(r["policy"])
                elif topic == ALERTS:
                    progress.alerts += ALERT.decode(value)["trace_id"] in traces
                elif topic == PROFILES:
                    s = SNAPSHOT.decode(value)
                    if s["model_version"] == VERSION:
                        progress.events.append((s["produced_at_us"], "snapshot", s["step_count"], s["window_start_us"]))
                elif m.key() == key and value:
                    at = m.timestamp()[1] * 1000
                    st = json.loads(value)
                    if topic == profile_log:
                        if st.get("window") is not None:  # None: the clock closed it, its snapshot counts it
                            progress.events.append((at, "profile", st["window"]["steps"], st["window"]["start_us"]))
                    else:
                        window = st["windows"] * drift_windows.window_size
                        n = len(st["reference"]["emb"]) + window + len(st["window"]["emb"]) + st["skipped"]
                        progress.events.append((at, "drift", n, 0))


def cpu_between(meter: CpuMeter, start_us: int, end_us: int) -> float:
    """The workers' CPU seconds between two of their own stamps (µs); SystemExit where the meter did not run then."""
    start, end = meter.at(start_us / 1e6), meter.at(end_us / 1e6)
    if start is None or end is None:
        raise SystemExit(f"no CPU samples around {start_us} and {end_us}: the meter ran from {meter.samples[0][0]}")
    return end - start


def throughput(
    bootstrap: str, tmp: Path, traffic: Traffic, n_steps: int, n_traces: int, n_workers: int, peer_topic: str = ""
) -> tuple[list[Worker], Throughput]:
    """Returns the workers, caught up, for the latency runs. With several, the clock starts at the first one's Ready
    line (the others' joining and the rebalance it causes count against them)."""
    run = uuid.uuid4().hex[:8]
    traces = [f"bench-{run}-{t}" for t in range(n_traces)]
    per = n_steps // n_traces
    producer = EventProducer(bootstrap)
    t0 = time.time_ns() // 1000
    blocks = 0
    for i in range(0, per, traffic.block):  # each trace's steps in blocks of ``block``, the traces interleaved
        for k, t in enumerate(traces):
            drawn = [traffic.step(t, j, t0, k) for j in range(i, min(i + traffic.block, per))]
            value = traffic.encode_block(drawn)
            producer.send(STEP_BLOCKS, t, value)
            if peer_topic:  # the same bytes for the peer, on a topic of its own nothing else writes to
                producer.send(peer_topic, t, value)
            blocks += 1
    for k, t in enumerate(traces):
        producer.send(COMPLETIONS, t, COMPLETION.encode(traffic.completion(t, per, k)))
    producer.flush()
    workers, meter = start_workers(bootstrap, tmp, n_workers)
    ready_us = min(w.ready_us for w in workers)
    progress = Progress()
    steps = per * n_traces

    def done(p: Progress) -> bool:
        return (
            len(p.finals) == n_traces
            and p.done_at("profile", steps) is not None
            and p.done_at("drift", n_traces) is not None
        )

    read_progress(bootstrap, workers, set(traces), progress, done)
    time.sleep(0.1)  # a sample after the last agent's stamp
    meter.halt.set()
    meter.join()
    ends = {
        "risk": max(progress.finals.values(), default=None),
        "profiling": progress.done_at("profile", steps),
        "drift": progress.done_at("drift", n_traces),
    }
    if len(progress.finals) < n_traces:
        ends["risk"] = None
    never = sorted(k for k, v in ends.items() if v is None)
    if never:  # read_progress gave up at its deadline: there is no time to report for these agents
        for w in workers:
            w.stop()
        raise SystemExit(
            f"agents never finished the input: {', '.join(never)} (risk FINALs: {len(progress.finals)} "
            f"of {n_traces}; worker logs: {', '.join(str(w.log) for w in workers)})"
        )
    done_s = {k: (v - ready_us) / 1e6 for k, v in ends.items() if v is not None}
    end_us = ready_us + int(max(done_s.values()) * 1e6)
    cpu = cpu_between(meter, ready_us, end_us)  # what the workers spent starting is not in it
    return workers, Throughput(
        steps, n_traces, max(done_s.values()), done_s, progress.policies, progress.alerts, cpu, blocks
    )


def probe(producer: EventProducer, consumer: EventConsumer, traffic: Traffic) -> float | None:
    """One NaN trace: three healthy steps, then the NaN step; ms from its emission to its alert's arrival."""
    trace = f"lat-{uuid.uuid4().hex}"
    t0 = time.time_ns() // 1000
    steps = [traffic.step(trace, i, t0, 7) for i in range(3)]
    bad = traffic.nan_step(trace, 3)
    bad["emitted_at_us"] = time.time_ns() // 1000
    steps.append(bad)
    for i in range(0, len(steps), traffic.block):  # the NaN step is the last of its block: it leaves as it is computed
        producer.send(STEP_BLOCKS, trace, traffic.encode_block(steps[i : i + traffic.block]))
    producer.flush()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for m in consumer.poll_batch(1, 1.0):  # returns as soon as one message is there
            arrived_us = time.time_ns() // 1000
            if ALERT.decode(m.value() or b"")["trace_id"] == trace:
                return (arrived_us - bad["emitted_at_us"]) / 1000
    return None


class Load(threading.Thread):
    """Healthy traces of ``length`` steps and their completions, offered at ``rate`` step events per second.

    The steps are drawn once, before the clock, as the blocks of a few template traces; each trace sent is one of
    them under its own trace id, with its steps stamped as they leave. Drawing every step while sending took most of
    a core at the rates measured here, on a machine whose two cores also run the worker and the broker."""

    TEMPLATES = 8

    def __init__(self, bootstrap: str, traffic: Traffic, rate: float, length: int) -> None:
        super().__init__(daemon=True)
        self.producer, self.traffic, self.rate, self.length = EventProducer(bootstrap), traffic, rate, length
        self.stop_event = threading.Event()
        self.sent = 0
        self.seconds = 0.0
        self.templates = []
        for k in range(self.TEMPLATES):
            steps = [traffic.step("template", i, 0, k) for i in range(length)]
            cuts = range(0, length, traffic.block)
            self.templates.append([dict(block_record(from_steps(steps[c : c + traffic.block]), 0)) for c in cuts])

    def _send_block(self, template: dict[str, Any], trace: str) -> int:
        now = time.time_ns() // 1000
        n = int(template["count"])
        rec = {**template, "trace_id": trace, "request_id": trace, "flushed_at_us": now}
        rec["emitted_at_us"] = np.full(n, now, dtype="<i8").tobytes()
        self.producer.send(STEP_BLOCKS, trace, BLOCK.encode(rec))
        return n

    def run(self) -> None:
        start = time.monotonic()
        trace, k = "", 0
        blocks: list[dict[str, Any]] = []
        while not self.stop_event.is_set():
            due = int((time.monotonic() - start) * self.rate)
            while self.sent < due:
                if not blocks:
                    if trace:
                        self.producer.send(
                            COMPLETIONS, trace, COMPLETION.encode(self.traffic.completion(trace, self.length, k))
                        )
                    trace, k = f"load-{uuid.uuid4().hex}", k + 1
                    blocks = list(self.templates[k % self.TEMPLATES])
                self.sent += self._send_block(blocks.pop(0), trace)
            self.producer.poll()
            time.sleep(0.005)
        self.producer.flush()
        self.seconds = time.monotonic() - start


def latency(bootstrap: str, traffic: Traffic, n: int, load_rate: float, length: int = 0) -> tuple[list[float], int]:
    """n alerts (after three warm-ups), optionally under a load; latencies in ms and how many never arrived."""
    producer = EventProducer(bootstrap)
    # its own generator: numpy's is not shared between threads
    offered = Traffic(traffic.policy, seed=1000, block=traffic.block)
    load = Load(bootstrap, offered, load_rate, length) if load_rate > 0 else None
    lat: list[float] = []
    lost = 0
    with EventConsumer(bootstrap, f"bench-{uuid.uuid4().hex}", [ALERTS], {"auto.offset.reset": "latest"}) as consumer:
        consumer.poll_batch(1, 2.0)  # joined and positioned at the end
        rng = random.Random(0)
        for k in range(-3, n):  # warm-ups: the worker's first sends to evo.alerts fetch its metadata
            if k == 0 and load is not None:
                load.start()
                time.sleep(2.0)  # the load reaches the worker before the first measured probe
            got = probe(producer, consumer, traffic)
            if got is None:
                lost += k >= 0
            elif k >= 0:
                lat.append(got)
            time.sleep(rng.uniform(0.0, 0.1))  # probes do not ride the worker's batching rhythm
    if load is not None:
        load.stop_event.set()
        load.join()
    return lat, lost


@contextmanager
def brokers(bootstrap: str | None, cluster: bool) -> Iterator[str]:
    """One private broker (``bench_broker``), or with ``cluster`` the local three-node cluster on loopback (the
    catalog's topics replicated 3 times, 2 in sync), stopped and removed after."""
    if not cluster:
        with bench_broker(bootstrap) as server:
            yield server
        return
    tmp = Path(tempfile.mkdtemp(prefix="evostream-bench-cluster-"))
    nodes = LocalCluster(load_settings(stack_dir=tmp, broker_port=0, controller_port=0, ready_timeout_s=120.0))
    say = lambda m: print(m, file=sys.stderr)  # noqa: E731
    before = os.environ.pop("EVOSTREAM_KAFKA_CREDENTIALS", None)  # an earlier run's file, removed with its nodes
    try:
        layout = nodes.up(say)
        os.environ["EVOSTREAM_KAFKA_CREDENTIALS"] = str(nodes.credentials_file)  # the workers log in with these
        yield layout.bootstrap
    finally:
        nodes.down(progress=say)
        shutil.rmtree(tmp, ignore_errors=True)
        os.environ.pop("EVOSTREAM_KAFKA_CREDENTIALS", None)
        if before is not None:
            os.environ["EVOSTREAM_KAFKA_CREDENTIALS"] = before


def one_run(
    args: argparse.Namespace, policy: RiskPolicy, r: int, n_workers: int
) -> tuple[dict[str, float], dict[str, Any] | None]:
    """One run with ``n_workers`` workers on a fresh broker: throughput, CPU, latency idle and under load, and the
    peer on the same records where asked; the figures row and the peer's."""
    tmp = Path(tempfile.mkdtemp(prefix="evostream-bench-proc-"))
    traffic = Traffic(policy, seed=r, block=args.block)
    peer: dict[str, Any] | None = None
    with brokers(args.bootstrap, args.cluster) as bootstrap:
        peer_topic = f"bench-peer-{uuid.uuid4().hex[:8]}" if args.peer else ""
        if peer_topic:  # laid out like evo.step-blocks
            ensure_topics(bootstrap, [replace(next(t for t in CATALOG if t.name == STEP_BLOCKS), name=peer_topic)])
        workers, tp = throughput(bootstrap, tmp, traffic, args.steps, args.traces, n_workers, peer_topic)
        try:
            idle, idle_lost = latency(bootstrap, traffic, args.alerts, 0.0)
            offered = args.load * tp.steps_per_s
            length = args.load_trace_steps or args.steps // args.traces
            loaded, load_lost = latency(bootstrap, traffic, args.alerts, offered, length) if args.load > 0 else ([], 0)
        finally:
            for w in workers:
                w.stop()
        for k, w in enumerate(workers):  # the worker's own counters, logged as it stops
            line = re.findall(r"processors: (.*)", w.log.read_text(errors="replace"))
            if line:
                got = dict(part.rsplit(" ", 1) for part in line[-1].strip().split(", "))
                print(
                    f"run {r}: worker {k}: {got.get('gc_full')} full garbage collections, the longest collection "
                    f"{got.get('gc_longest_ms')} ms"
                )
        if peer_topic:  # the same StepBlock records, read from the start by the PyFlink job, nothing else running
            peer = run_peer(bootstrap, peer_topic, tp.blocks, tp.steps, kind="blocks", parallelism=1)
    agents = ", ".join(f"{k} {v:.2f} s" for k, v in tp.done_s.items())
    ready = "the first worker ready" if n_workers > 1 else "worker ready"
    print(
        f"run {r}, {n_workers} worker(s): {tp.steps:,} step events in blocks of {args.block} + {tp.completions:,} "
        f"completions ({args.traces} traces) in {tp.seconds:.2f} s from {ready} = {tp.steps_per_s:,.0f} step "
        f"events/s, {tp.cpu_us_per_step:.1f} CPU-µs per step event over the workers ({tp.cpu_s:.2f} CPU s; all "
        f"done: {agents}); FINAL reports judged with {', '.join(sorted(tp.policies))}; alerts on the healthy "
        f"traces: {tp.healthy_alerts}"
    )
    row = {
        "step events/s": tp.steps_per_s,
        "CPU-µs per step event": tp.cpu_us_per_step,
        "completions/s": tp.completions / tp.seconds,
    }
    for name, lat, lost in (("idle", idle, idle_lost), ("load", loaded, load_lost)):
        if not lat:
            continue
        row |= {f"{name} p50": statistics.median(lat), f"{name} p99": pct(lat, 99)}
        where = "idle worker" if name == "idle" else f"under {args.load:g}x load ({offered:,.0f} step events/s)"
        print(
            f"run {r}: alert latency, NaN step emitted -> RiskAlert at a consumer, {where}, {len(lat)}/"
            f"{args.alerts} alerts{f' ({lost} lost)' if lost else ''}: p50 {statistics.median(lat):.1f} ms, "
            f"p99 {pct(lat, 99):.1f} ms, max {max(lat):.1f} ms"
        )
    if peer is not None:
        print(
            f"run {r}: PyFlink peer (thread mode, parallelism 1), same records: {peer['steps_per_s']:,.0f} step "
            f"events/s, {peer['cpu_us_per_step']:.1f} CPU-µs per step event ({peer['steps']:,} steps in "
            f"{peer['seconds']:.2f} s)"
        )
    sys.stdout.flush()
    return row, peer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=50_000)
    ap.add_argument("--traces", type=int, default=500)
    ap.add_argument("--alerts", type=int, default=200)
    ap.add_argument("--load", type=float, default=0.5, help="offered load while probing, x the measured step rate")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--workers", default="1", help="worker processes of the one app (consumer group); a list runs each: 1,2,4"
    )
    ap.add_argument("--block", type=int, default=16, help="steps of one trace per StepBlock record")
    ap.add_argument(
        "--load-trace-steps", type=int, default=0, help="steps per trace of the load (default: as the input's)"
    )
    ap.add_argument("--cluster", action="store_true", help="the local three-node cluster instead of one broker")
    ap.add_argument("--peer", action="store_true", help="also run the PyFlink peer on the same records")
    ap.add_argument("--bootstrap", default=None)
    args = ap.parse_args()
    counts = [int(x) for x in str(args.workers).split(",")]
    # SIGTERM unwinds like Ctrl-C, so the worker and the private broker are stopped on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    policy = policy_for(load_policies(), VERSION)
    shared = args.bootstrap or load_settings().bootstrap_servers or LocalStack(load_settings()).read_state()
    if (args.runs > 1 or len(counts) > 1) and shared:
        raise SystemExit("several runs need a private broker each (a new worker reads the topics from the start)")
    zh, zn = Traffic(policy, seed=0).z_scores()
    print(
        f"risk policy for {VERSION}: {policy.name}; steps of {len(policy.heads.mean[0])} layers x "
        f"{len(policy.heads.mean[0][0])} heads drawn around its z-score baselines (largest |z| on a trace: heads "
        f"{zh:.1f}, layer norms {zn:.1f}; thresholds {policy.collapse_z:g} / {policy.blowup_z:g})"
    )
    results: dict[int, list[dict[str, float]]] = {n: [] for n in counts}
    peers: list[dict[str, Any]] = []
    for r in range(1, args.runs + 1):
        for n in counts:  # the worker counts interleaved, so a drift of the machine spreads over all of them
            row, peer = one_run(args, policy, r, n)
            results[n].append(row)
            peers += [peer] if peer is not None else []
    for n, rows in results.items():
        print(f"{n} worker(s), over {len(rows)} run(s), min / median / max:")
        for key in rows[0]:
            vals = [row[key] for row in rows if key in row]
            fmt = ",.0f" if key.startswith("step") else ".1f"
            print(f"  {key}: {spread(vals, fmt)}" + ("" if "/s" in key or "µs" in key else " ms"))
    if len(counts) > 1:
        base = statistics.median(row["step events/s"] for row in results[counts[0]])
        for n in counts[1:]:
            rate = statistics.median(row["step events/s"] for row in results[n])
            print(
                f"scaling {counts[0]} -> {n} workers: {rate / base:.2f}x, efficiency "
                f"{rate / base / (n / counts[0]):.2f} (median step events/s)"
            )
    if peers:
        print(
            f"PyFlink peer over {len(peers)} run(s): step events/s {spread([p['steps_per_s'] for p in peers], ',.0f')}"
            f"; CPU-µs per step event {spread([p['cpu_us_per_step'] for p in peers], '.1f')}"
        )
    print(
        f"# reproduce: python -m bench.processors --steps {args.steps} --traces {args.traces} --alerts {args.alerts} "
        f"--load {args.load:g} --runs {args.runs} --workers {args.workers} --block {args.block}"
        f"{f' --load-trace-steps {args.load_trace_steps}' if args.load_trace_steps else ''}"
        f"{' --cluster' if args.cluster else ''}{' --peer' if args.peer else ''}"
    )


if __name__ == "__main__":
    main()
