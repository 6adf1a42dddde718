"""What shadowing adds to production requests' latency, as a client sees it (a measurement, not a test).

Real parts: a broker (``--bootstrap``, the running local stack, or a private one), an inference service of the
embedded default model in this process (static batching), and ``InferenceClient``. The candidate is the same weights
loaded again under another version, so a shadow answer costs what a real candidate's would. Steady open-loop traffic
(``--rate`` requests/s of the suite's held-out prompts for ``--seconds``) under each shadow share (``--shares``,
the service's deployment switched between runs, in an order that rotates from rep to rep); the latency of every
production answer, submit to reply in the client's hands, is summarised per share: p50, p95, and p95 against the
share 0 of the same rep. The shadow answers are generated after the batch's production answers are handed over,
so what they add is the next batch's wait.

Run: python -m bench.shadow [--rate 8] [--seconds 20] [--shares 0,0.1,1] [--reps 3] [--max-batch 8]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import uuid

from bench.broker import bench_broker
from bench.stats import pct, spread
from evostream.models.loading import load_model
from evostream.models.suite.evaluate import eval_set
from evostream.producers.client import InferenceClient, Reply
from evostream.producers.deployment import Deployment, DeploymentSlot
from evostream.producers.service import InferenceService, ServeOptions
from evostream.producers.swap import ServingModel


def run_share(
    client: InferenceClient, prompts: list[str], rate: float, seconds: float, tag: str
) -> tuple[list[float], int]:
    """Open-loop traffic: one request every 1/rate s for ``seconds``; the latencies (ms) of the answers, errors."""
    done: dict[str, float] = {}
    sent: list[tuple[Reply, float]] = []
    lock = threading.Lock()
    start = time.monotonic()
    n = int(rate * seconds)
    for i in range(n):
        time.sleep(max(0.0, start + i / rate - time.monotonic()))
        at = time.monotonic()
        reply = client.submit(prompts[i % len(prompts)], max_new_tokens=32, request_id=f"{tag}-{i}-{uuid.uuid4().hex}")

        def arrived(_: object, rid: str = reply.request_id) -> None:
            with lock:
                done[rid] = time.monotonic()

        reply.future.add_done_callback(arrived)
        sent.append((reply, at))
    errors = 0
    for reply, _ in sent:
        errors += reply.result(120)["error"] is not None
    return [(done[r.request_id] - at) * 1000 for r, at in sent], errors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bootstrap", default=None)
    ap.add_argument("--rate", type=float, default=8.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--shares", default="0,0.1,1")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--max-batch", type=int, default=8)
    args = ap.parse_args()
    shares = [float(s) for s in args.shares.split(",")]
    prompts = [ex.prompt for ex in eval_set(20)]
    prod = ServingModel("evostream/t5-tiny-suite@bench-production", load_model("default", device="cpu"))
    cand = ServingModel("evostream/t5-tiny-suite@bench-candidate", load_model("default", device="cpu"))
    with bench_broker(args.bootstrap) as bootstrap:
        slot = DeploymentSlot(Deployment(prod))
        options = ServeOptions(max_batch=args.max_batch, max_wait_ms=5)
        svc = InferenceService(bootstrap, prod.loaded, None, options, deployments=slot)
        ready = threading.Event()
        thread = threading.Thread(target=svc.run, kwargs={"on_ready": ready.set}, daemon=True)
        thread.start()
        assert ready.wait(60), "the service did not start"
        results: dict[float, list[tuple[float, float]]] = {s: [] for s in shares}
        try:
            with InferenceClient(bootstrap) as client:
                run_share(client, prompts, args.rate, 3.0, "warm")
                for rep in range(args.reps):
                    order = shares[rep % len(shares) :] + shares[: rep % len(shares)]
                    for share in order:
                        slot.set(Deployment(prod, cand, 0, share, "bench") if share else Deployment(prod))
                        lat, errors = run_share(client, prompts, args.rate, args.seconds, f"r{rep}-{share}")
                        assert errors == 0, f"{errors} errors at share {share}"
                        results[share].append((pct(lat, 50), pct(lat, 95)))
                        print(f"rep {rep} share {share:g}: p50 {pct(lat, 50):.1f} ms, p95 {pct(lat, 95):.1f} ms")
        finally:
            svc.stop_event.set()
            thread.join(60)
    base = [p95 for _, p95 in results[shares[0]]]
    print(f"{args.rate:g} req/s for {args.seconds:g} s per share, {args.reps} reps (min / median / max):")
    for share in shares:
        p50s, p95s = [a for a, _ in results[share]], [b for _, b in results[share]]
        added = [(b / a - 1) * 100 for a, b in zip(base, p95s, strict=True)]
        print(
            f"  shadow share {share:g}: p50 {spread(p50s, '.1f')} ms, p95 {spread(p95s, '.1f')} ms, "
            f"p95 vs share {shares[0]:g} {spread(added, '+.1f')} % (median {statistics.median(added):+.1f} %)"
        )


if __name__ == "__main__":
    main()
