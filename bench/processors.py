"""Stream processors on the real broker: step events per second through the Faust worker, and how long an alert
takes from the offending step event.

Throughput: N step events (T traces) and their completions are produced first; then a fresh worker
(``evostream process``, its own consumer group) starts, and the clock runs from its "Ready" to the last FINAL
report. Latency: then, with the same worker caught up and idle, one trace at a time gets a NaN step; the latency is
the alert's arrival at a consumer minus the step event's emitted_at_us (same machine, same clock).

A new worker reads the topics from their start, so the throughput figure is only meaningful on a broker holding
nothing else (the default: a private broker, unless --bootstrap or a running local stack is given).

Run: python -m bench.processors [--steps 50000 --traces 500 --alerts 200]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.broker import bench_broker
from evostream.bus.consumer import EventConsumer
from evostream.bus.producer import EventProducer
from schemas.catalog import ALERTS, COMPLETIONS, RISK, STEPS
from schemas.codec import RecordCodec
from schemas.samples import generation_step
from schemas.tensors import pack_f32

STEP, COMPLETION = RecordCodec("GenerationStep"), RecordCodec("Completion")


def step(trace: str, i: int, layers: int, heads: int) -> dict[str, Any]:
    rec = generation_step(i, trace, layers, heads, t0_us=time.time_ns() // 1000)
    rec.update(model_version="bench-model@1", entropy_bits=0.5, token_id=(i * 37 + 11) % 300)
    return rec


def completion(trace: str, n: int) -> dict[str, Any]:
    return {"trace_id": trace, "request_id": trace, "reply_to": "", "tenant": "bench", "model_version": "bench-model@1",
            "output_text": "", "token_count": n, "prompt_token_count": 1, "prompt_surprisal_bits": None,
            "prompt_embedding": [], "finish_reason": "STOP", "error": None,
            "timings": {"queue_us": 0, "prefill_us": 0, "decode_us": 0, "total_us": 0},
            "completed_at_us": time.time_ns() // 1000}  # fmt: skip


def start_worker(bootstrap: str, tmp: Path) -> tuple[subprocess.Popen[bytes], Path, float]:
    log = tmp / f"worker-{uuid.uuid4().hex[:6]}.log"
    env = {**os.environ, "EVOSTREAM_BOOTSTRAP_SERVERS": bootstrap, "EVOSTREAM_PROCESSORS_DIR": str(tmp),
           "EVOSTREAM_PROCESSORS_APP_ID": f"bench-processors-{uuid.uuid4().hex[:8]}"}  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen([str(Path(sys.executable).with_name("evostream")), "process", "--loglevel", "INFO"],
                                env=env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    while b"Worker]: Ready" not in log.read_bytes():
        if proc.poll() is not None:
            raise SystemExit(f"worker died:\n{log.read_text()[-2000:]}")
        time.sleep(0.05)
    return proc, log, time.monotonic()


def throughput(
    bootstrap: str, tmp: Path, n_steps: int, n_traces: int, layers: int, heads: int
) -> subprocess.Popen[bytes]:
    """Returns the worker, caught up, for the latency run."""
    run = uuid.uuid4().hex[:8]
    traces = [f"bench-{run}-{t}" for t in range(n_traces)]
    per = n_steps // n_traces
    producer = EventProducer(bootstrap)
    for i in range(per):
        for t in traces:
            producer.send(STEPS, t, STEP.encode(step(t, i, layers, heads)))
    for t in traces:
        producer.send(COMPLETIONS, t, COMPLETION.encode(completion(t, per)))
    producer.flush()
    codec = RecordCodec("RiskReport")
    with EventConsumer(bootstrap, f"bench-{run}", [RISK], {"auto.offset.reset": "latest"}) as consumer:
        consumer.poll_batch(1, 2.0)  # joined and positioned at the end before the worker starts
        proc, _, t0 = start_worker(bootstrap, tmp)
        left, last = set(traces), t0
        while left and time.monotonic() - t0 < 600:
            for m in consumer.poll_batch(5000, 0.2):
                r = codec.decode(m.value() or b"")
                if r["stage"] == "FINAL" and r["trace_id"] in left:
                    left.discard(r["trace_id"])
                    last = time.monotonic()
    events = per * n_traces + n_traces
    el = last - t0
    status = "all traces" if not left else f"{len(left)} traces missing"
    print(f"throughput: {per * n_traces:,} step events ({layers}x{heads}) + {n_traces} completions of {n_traces} "
          f"traces in {el:.2f} s from worker ready = {events / el:,.0f} events/s ({status})")  # fmt: skip
    return proc


def latency(bootstrap: str, proc: subprocess.Popen[bytes], n: int, layers: int, heads: int) -> None:
    """With the worker caught up and idle: one NaN step at a time, time to its alert."""
    producer = EventProducer(bootstrap)
    codec = RecordCodec("RiskAlert")
    lat_ms: list[float] = []
    with EventConsumer(bootstrap, f"bench-{uuid.uuid4().hex}", [ALERTS], {"auto.offset.reset": "latest"}) as consumer:
        consumer.poll_batch(1, 2.0)
        for k in range(-3, n):  # three warm-up alerts: the worker's first send to evo.alerts fetches its metadata
            trace = f"lat-{uuid.uuid4().hex}"
            for i in range(3):
                producer.send(STEPS, trace, STEP.encode(step(trace, i, layers, heads)))
            bad = step(trace, 3, layers, heads)
            bad.update(layer_nonfinite=[1] * layers, layer_hidden_l2=pack_f32([float("nan")] * layers),
                       emitted_at_us=time.time_ns() // 1000)  # fmt: skip
            producer.send(STEPS, trace, STEP.encode(bad))
            producer.flush()
            deadline = time.monotonic() + 10
            got = False
            while not got and time.monotonic() < deadline:
                for m in consumer.poll_batch(100, 0.05):
                    a = codec.decode(m.value() or b"")
                    if a["trace_id"] == trace:
                        if k >= 0:
                            lat_ms.append((time.time_ns() // 1000 - bad["emitted_at_us"]) / 1000)
                        got = True
            if not got:
                print(f"alert {k} never arrived", file=sys.stderr)
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    q = statistics.quantiles(lat_ms, n=100)
    slowest = sorted(range(len(lat_ms)), key=lambda i: -lat_ms[i])[:3]
    print("slowest alerts (index: ms): " + ", ".join(f"{i}: {lat_ms[i]:.0f}" for i in slowest), file=sys.stderr)
    print(f"alert latency, NaN step event emitted -> RiskAlert consumed, {len(lat_ms)}/{n} alerts: "
          f"p50 {statistics.median(lat_ms):.1f} ms, p99 {q[98]:.1f} ms, max {max(lat_ms):.1f} ms")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=50_000)
    ap.add_argument("--traces", type=int, default=500)
    ap.add_argument("--alerts", type=int, default=200)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--bootstrap", default=None)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="evostream-bench-proc-"))
    with bench_broker(args.bootstrap) as bootstrap:
        worker = throughput(bootstrap, tmp, args.steps, args.traces, args.layers, args.heads)
        latency(bootstrap, worker, args.alerts, args.layers, args.heads)
    print(f"# reproduce: python -m bench.processors --steps {args.steps} --traces {args.traces} --alerts {args.alerts} "
          f"--layers {args.layers} --heads {args.heads}", file=sys.stderr)  # fmt: skip


if __name__ == "__main__":
    main()
