"""Serving through Kafka as a client sees it: requests/s, latency and time to first token, side by side in one run.

Real parts only: a broker (``--bootstrap``, the running local stack, or a private one), ``evostream serve``
processes of the default model started here (``--instances``, one consumer group), and ``InferenceClient``. Prompts
are the suite's held-out examples; every answer is checked against the expected one and the accuracy printed, so a
fast wrong answer cannot pass for a result.

1. The client. ``--requests`` requests pipelined through one client (at most ``--in-flight`` outstanding; replies
   routed by its one reader), against the client as it was before it had a reader, on ``--legacy`` requests:
   ``publish`` waiting for the broker's acknowledgement per request, then each ``await_reply`` building a consumer,
   looking offsets up by time and scanning every completion since (what a client without a reader still does for a
   request it did not send). Client-side latency: submit -> the reply in the client's hands.
2. Concurrency. A closed loop keeping C requests in flight (``--concurrency 1,8,32``) for ``--per-level`` requests:
   generated tokens/s, requests/s, latency, and time to first token (submit -> the ``emitted_at_us`` of the
   request's step-0 event, read back from evo.steps; one machine, one clock). Each of the service's ``--batching``
   modes (continuous: requests join and leave the running batch between steps; static: each batch runs to
   completion) is started afresh and measured in every rep, side by side, in an order that rotates from rep to
   rep; the client section runs on a service of its own. TTFT here ends when the emitter process builds the step-0
   record (its ``emitted_at_us``), before Kafka delivers it.

Run: python -m bench.serving [--requests 1000] [--legacy 60] [--concurrency 1,8,32] [--per-level 96] [--reps 3]
     [--batching continuous,static] [--max-batch 8]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.broker import bench_broker
from bench.procs import stop
from bench.stats import pct, spread
from evostream.core.bus.reader import TopicReader
from evostream.core.clock import now_us
from evostream.models.suite.evaluate import eval_set
from evostream.models.suite.tasks import Example
from evostream.producers.client import InferenceClient, Published, Reply
from evostream.schemas.catalog import STEPS

MAX_NEW_TOKENS = 32


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        stop(self.proc, self.log, "evostream serve")


def start_servers(bootstrap: str, n: int, max_batch: int, batching: str, tmp: Path) -> list[Server]:
    """``n`` ``evostream serve`` processes of the default model, returned once each says it is serving."""
    servers = []
    for k in range(n):
        log = tmp / f"serve-{k}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "evostream.cli",
                    "serve",
                    "--bootstrap",
                    bootstrap,
                    "--max-batch",
                    str(max_batch),
                    "--batching",
                    batching,
                    "--log-level",
                    "WARNING",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(os.environ),
            )
        servers.append(Server(proc, log))
    deadline = time.monotonic() + 180
    for s in servers:
        while not re.search(rb"serving \S+ \(", s.log.read_bytes()):
            if s.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"evostream serve did not start:\n{s.log.read_text()[-2000:]}")
            time.sleep(0.2)
    return servers


@dataclass
class Outcome:
    seconds: float
    latencies_ms: list[float]
    right: int
    total: int
    tokens: int
    replies: list[dict[str, Any]]

    @property
    def per_s(self) -> float:
        return self.total / self.seconds


def check(examples: Sequence[Example], replies: Sequence[dict[str, Any]]) -> int:
    return sum(
        r["error"] is None and r["output_text"].strip() == e.answer for e, r in zip(examples, replies, strict=True)
    )


def pipelined(client: InferenceClient, examples: Sequence[Example]) -> Outcome:
    """Every example submitted through ``client`` as fast as its in-flight bound allows; then every reply awaited."""
    sent_at: dict[str, float] = {}
    got_at: dict[str, float] = {}
    replies: list[Reply] = []
    t0 = time.perf_counter()
    for e in examples:
        reply = client.submit(e.prompt, max_new_tokens=MAX_NEW_TOKENS)
        sent_at[reply.request_id] = time.perf_counter()  # once sent: a wait for a free slot is not its latency
        reply.future.add_done_callback(lambda _f, rid=reply.request_id: got_at.__setitem__(rid, time.perf_counter()))
        replies.append(reply)
    recs = [r.result(300) for r in replies]
    seconds = time.perf_counter() - t0
    lat = [(got_at[r.request_id] - sent_at[r.request_id]) * 1000 for r in replies]
    return Outcome(seconds, lat, check(examples, recs), len(recs), sum(r["token_count"] for r in recs), recs)


def legacy(bootstrap: str, examples: Sequence[Example]) -> Outcome:
    """The client before it had a reader: acknowledged publish per request, then a time-sought scan per reply."""
    sender = InferenceClient(bootstrap)
    sent: list[tuple[Published, float]] = []
    t0 = time.perf_counter()
    for e in examples:
        t = time.perf_counter()
        sent.append((sender.publish(e.prompt, max_new_tokens=MAX_NEW_TOKENS), t))
    scanner = InferenceClient(bootstrap)  # never sent anything: every await_reply is a scan from the topic
    recs, lat = [], []
    for published, t in sent:
        recs.append(scanner.await_reply(published, 300))
        lat.append((time.perf_counter() - t) * 1000)
    seconds = time.perf_counter() - t0
    sender.close()
    scanner.close()
    return Outcome(seconds, lat, check(examples, recs), len(recs), sum(r["token_count"] for r in recs), recs)


def first_token_ms(bootstrap: str, replies: Sequence[dict[str, Any]], since_us: int) -> list[float]:
    """Submit -> step-0 event emitted, per reply (its trace's step 0 read back from evo.steps)."""
    want = {r["trace_id"]: r for r in replies if r["token_count"] > 0}
    found: dict[str, float] = {}
    with TopicReader(
        bootstrap,
        STEPS,
        "GenerationStep",
        since_us=since_us,
        idle_s=None,
        timeout_s=120,
        until=lambda: len(found) >= len(want),
        batch=5000,
        name="bench-ttft",
    ) as reader:
        for step in reader:
            rec = want.get(step["trace_id"])
            if rec is not None and step["step"] == 0:
                found[step["trace_id"]] = (step["emitted_at_us"] - rec_submitted(rec)) / 1000
    if len(found) < len(want):
        raise SystemExit(f"only {len(found)} of {len(want)} step-0 events were read back from {STEPS}")
    return list(found.values())


def rec_submitted(rec: dict[str, Any]) -> int:
    """The request's submit time, as the service recorded it: completion time minus the service's timings."""
    t = rec["timings"]
    return int(rec["completed_at_us"] - t["total_us"] - t["queue_us"])


def ms(xs: list[float]) -> str:
    return f"p50 {statistics.median(xs):,.1f} ms, p99 {pct(xs, 99):,.1f} ms"


def client_section(
    bootstrap: str,
    args: argparse.Namespace,
    examples: Sequence[Example],
    rep: int,
    mode: str,
    note: Callable[[str, float], None],
) -> None:
    """The pipelined client, and the client as it was, against the same service."""
    with InferenceClient(bootstrap, max_in_flight=args.in_flight) as client:
        out = pipelined(client, examples)
    print(
        f"rep {rep} ({mode}): pipelined client, {out.total} requests (<= {args.in_flight} in flight): "
        f"{out.per_s:,.1f} requests/s, latency {ms(out.latencies_ms)}; {out.right}/{out.total} right"
    )
    note("pipelined client requests/s", out.per_s)
    note("pipelined client latency p50 ms", statistics.median(out.latencies_ms))
    note("pipelined client latency p99 ms", pct(out.latencies_ms, 99))
    if args.legacy:
        old = legacy(bootstrap, examples[: args.legacy])
        print(
            f"rep {rep} ({mode}): client as it was, {old.total} requests: {old.per_s:,.1f} requests/s, "
            f"latency {ms(old.latencies_ms)}; {old.right}/{old.total} right"
        )
        note("client as it was requests/s", old.per_s)


def level(
    bootstrap: str, examples: Sequence[Example], c: int, rep: int, mode: str, note: Callable[[str, float], None]
) -> None:
    """A closed loop keeping ``c`` requests in flight."""
    since = now_us() - 1_000_000
    with InferenceClient(bootstrap, max_in_flight=c) as client:
        out = pipelined(client, examples)
    ttft = first_token_ms(bootstrap, out.replies, since)
    queue = [r["timings"]["queue_us"] / 1000 for r in out.replies]
    print(
        f"rep {rep} ({mode}): {c} in flight, {out.total} requests: {out.tokens / out.seconds:,.0f} generated "
        f"tokens/s, {out.per_s:,.1f} requests/s, latency {ms(out.latencies_ms)}, time to first token {ms(ttft)} "
        f"(of which send -> admitted {ms(queue)}); {out.right}/{out.total} right"
    )
    note(f"{mode}, {c} in flight: tokens/s", out.tokens / out.seconds)
    note(f"{mode}, {c} in flight: requests/s", out.per_s)
    note(f"{mode}, {c} in flight: TTFT p50 ms", statistics.median(ttft))
    note(f"{mode}, {c} in flight: TTFT p99 ms", pct(ttft, 99))
    note(f"{mode}, {c} in flight: latency p50 ms", statistics.median(out.latencies_ms))
    note(f"{mode}, {c} in flight: latency p99 ms", pct(out.latencies_ms, 99))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1000, help="requests pipelined through one client (0: skip)")
    ap.add_argument("--in-flight", type=int, default=256, help="the pipelined client's bound on requests in flight")
    ap.add_argument("--legacy", type=int, default=60, help="requests through the client as it was (0: skip)")
    ap.add_argument("--concurrency", default="1,8,32", help="closed-loop levels (requests in flight)")
    ap.add_argument("--per-level", type=int, default=96, help="requests per concurrency level")
    ap.add_argument("--instances", type=int, default=1, help="evostream serve processes (one consumer group)")
    ap.add_argument("--max-batch", type=int, default=8, help="the service's --max-batch")
    ap.add_argument("--batching", default="continuous,static", help="the service's --batching modes, side by side")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--bootstrap", default=None)
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    levels = [int(c) for c in args.concurrency.split(",") if c]
    pool = list(eval_set(max(1, (max(args.requests, args.per_level) + 5) // 6)))
    examples = [pool[i % len(pool)] for i in range(args.requests)]
    per_level = [pool[i % len(pool)] for i in range(args.per_level)]
    rows: dict[str, list[float]] = {}

    def note(key: str, value: float) -> None:
        rows.setdefault(key, []).append(value)

    tmp = Path(tempfile.mkdtemp(prefix="evostream-bench-serving-"))
    modes = [m for m in args.batching.split(",") if m]

    def serving(mode: str) -> list[Server]:
        servers = start_servers(bootstrap, args.instances, args.max_batch, mode, tmp)
        with InferenceClient(bootstrap) as warm:
            warm.infer_many([e.prompt for e in pool[:16]], timeout_s=120, max_new_tokens=MAX_NEW_TOKENS)
        return servers

    with bench_broker(args.bootstrap) as bootstrap:
        for rep in range(1, args.reps + 1):
            if args.requests:  # the client section on a service of its own (the first mode)
                servers = serving(modes[0])
                try:
                    client_section(bootstrap, args, examples, rep, modes[0], note)
                finally:
                    for s in servers:
                        s.stop()
            # side by side: every mode freshly started in every rep, in an order that rotates from rep to rep
            for mode in modes[rep % len(modes) :] + modes[: rep % len(modes)]:
                servers = serving(mode)
                try:
                    for c in levels:
                        level(bootstrap, per_level, c, rep, mode, note)
                    sys.stdout.flush()
                finally:
                    for s in servers:
                        s.stop()
    print(
        f"over {args.reps} reps, min / median / max ({args.instances} evostream serve, --max-batch {args.max_batch}, "
        f"default model, {os.cpu_count()} CPUs, broker on the same machine):"
    )
    for key, vals in rows.items():
        print(f"  {key}: {spread(vals, ',.1f')}")
    print(
        f"# reproduce: python -m bench.serving --requests {args.requests} --in-flight {args.in_flight} "
        f"--legacy {args.legacy} --concurrency {args.concurrency} --per-level {args.per_level} "
        f"--instances {args.instances} --max-batch {args.max_batch} --batching {args.batching} "
        f"--reps {args.reps}"
    )


if __name__ == "__main__":
    main()
