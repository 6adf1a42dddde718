"""Avro single-object encode and decode rates of GenerationStep records, at several model shapes.

Run: python -m bench.codec [--records N]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

from evostream.schemas.codec import RecordCodec
from evostream.schemas.samples import generation_step

SHAPES = [(4, 4), (12, 12), (24, 16)]  # (layers, heads): the embedded default, GPT-2 small, a 350M model


def best_rate(fn: object, n: int, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        best = min(best, time.perf_counter() - t0)
    return n / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--records", type=int, default=50_000)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    codec = RecordCodec("GenerationStep")
    print(f"# {platform.processor() or platform.machine()}, Python {platform.python_version()}, one core")
    print(f"{'layers x heads':>15} {'bytes':>6} {'encode/s':>10} {'decode/s':>10} {'enc+dec/s':>10}")
    for layers, heads in SHAPES:
        recs = [generation_step(i, "bench-trace", layers, heads) for i in range(args.records)]
        blobs = [codec.encode(r) for r in recs]
        enc = best_rate(lambda: [codec.encode(r) for r in recs], len(recs), args.reps)  # noqa: B023
        dec = best_rate(lambda: [codec.decode(b) for b in blobs], len(recs), args.reps)  # noqa: B023
        both = 1 / (1 / enc + 1 / dec)
        size = sum(map(len, blobs)) / len(blobs)
        print(f"{f'{layers} x {heads}':>15} {size:6.0f} {enc:10,.0f} {dec:10,.0f} {both:10,.0f}")
    print(f"# reproduce: python -m bench.codec --records {args.records} --reps {args.reps}", file=sys.stderr)


if __name__ == "__main__":
    main()
