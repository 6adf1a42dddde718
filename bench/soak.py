"""Soak: steady traffic with unique trace ids through the whole pipeline, and what grows.

The pipeline of ``bench/pipeline.py`` (serve, process, sinks on a private broker) answers requests at a steady rate,
each with its own trace id, for ``--minutes``. Every ``--every`` seconds it samples each process's resident memory
and the bytes each changelog topic holds on the broker's disk. After the warm-up (the first ``--warmup`` fraction of
the run) a healthy system is flat: the figures compare the peak of the last quarter with the peak of the first
quarter after the warm-up (peaks, because a compacted changelog is a sawtooth: it grows until the cleaner runs).
The stream processors' worker is restarted after the warm-up and again at the end: the restart time must not grow
with the traffic it has seen (it replays its changelogs).

    python -m bench.soak --minutes 60 --rate 4        # the long form (the curve is printed as CSV)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.pipeline import Pipeline, answered
from evostream.producers.client import InferenceClient, Reply

SERVICES = ("serve", "process", "sinks")


@dataclass
class Sample:
    elapsed_s: float
    sent: int
    answered: int
    rss_mb: dict[str, float]
    changelog_bytes: dict[str, int]


@dataclass
class Soak:
    """The curve, and its verdict: growth after the warm-up (last quarter's peak over the first quarter's after it)."""

    samples: list[Sample] = field(default_factory=list)
    restart_s: list[float] = field(default_factory=list)
    sent: int = 0
    answered: int = 0

    def growth(self, series: str, warmup: float) -> dict[str, float]:
        """For each process (``rss``) or changelog (``changelog``): last quarter's peak / post-warm-up peak - 1."""
        after = [s for s in self.samples if s.elapsed_s >= warmup * self.samples[-1].elapsed_s]
        quarter = max(1, len(after) // 4)
        first, last = after[:quarter], after[-quarter:]

        def values(s: Sample) -> dict[str, float]:
            return dict(s.rss_mb) if series == "rss" else {k: float(v) for k, v in s.changelog_bytes.items()}

        names = sorted({name for s in after for name in values(s)})
        out: dict[str, float] = {}
        for name in names:
            a = max(values(s).get(name, 0.0) for s in first)
            b = max(values(s).get(name, 0.0) for s in last)
            out[name] = (b / a - 1.0) if a > 0 else (0.0 if b == 0 else float("inf"))
        return out


def run(
    root: Path, minutes: float, rate: float, every_s: float, warmup: float, env: dict[str, str] | None = None
) -> Soak:
    soak = Soak()
    pipe = Pipeline(root, env)
    duration = minutes * 60
    try:
        pipe.up()
        client = InferenceClient(pipe.bootstrap)
        pending: list[Reply] = [client.submit("soak warm-up: what is one plus one?", max_new_tokens=6)]
        pipe.await_ready(pending[0], root / "sinks" / "sqlite" / "evostream.db")
        t0 = time.monotonic()
        next_sample = 0.0
        restarted = False
        while (elapsed := time.monotonic() - t0) < duration:
            due = int(elapsed * rate) + 1
            while soak.sent < due:
                prompt = f"soak request {soak.sent} ({uuid.uuid4().hex[:6]}): what is {soak.sent % 97} plus 3?"
                pending.append(client.submit(prompt, max_new_tokens=6))
                soak.sent += 1
            done = [r for r in pending if r.done()]
            soak.answered += sum(answered(r) for r in done)
            pending = [r for r in pending if not r.done()]
            if elapsed >= next_sample:
                pipe.check_alive()
                soak.samples.append(
                    Sample(
                        round(elapsed, 1),
                        soak.sent,
                        soak.answered,
                        {name: round(pipe.rss_mb(name), 1) for name in SERVICES},
                        pipe.topic_bytes("changelog"),
                    )
                )
                print(_csv(soak.samples[-1]), file=sys.stderr, flush=True)
                next_sample += every_s
            if not restarted and elapsed >= warmup * duration:
                soak.restart_s.append(round(pipe.restart_worker(), 2))
                restarted = True
            time.sleep(0.05)
        soak.answered += sum(answered(r) for r in pending)
        soak.restart_s.append(round(pipe.restart_worker(), 2))
    finally:
        pipe.down()
    return soak


def _csv(s: Sample) -> str:
    rss = " ".join(f"{k}={v}" for k, v in s.rss_mb.items())
    changelogs = sum(s.changelog_bytes.values())
    return f"{s.elapsed_s:8.1f}s sent={s.sent} answered={s.answered} rss_mb[{rss}] changelog_bytes={changelogs}"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=4.0, help="requests per second")
    parser.add_argument("--every", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=0.25, help="fraction of the run before the curve must be flat")
    parser.add_argument(
        "--horizon-s", type=float, default=None, help="the risk agent's replay horizon (default: the setting's)"
    )
    parser.add_argument("--root", type=Path, default=None, help="working folder (default: a fresh temporary one)")
    args = parser.parse_args()
    root = args.root or Path(os.environ.get("TMPDIR", "/tmp")) / f"evostream-soak-{uuid.uuid4().hex[:8]}"
    env = {} if args.horizon_s is None else {"EVOSTREAM_RISK_REPLAY_HORIZON_S": str(args.horizon_s)}
    soak = run(root, args.minutes, args.rate, args.every, args.warmup, env)
    print(
        json.dumps(
            {
                "sent": soak.sent,
                "answered": soak.answered,
                "restart_s": soak.restart_s,
                "rss_growth": soak.growth("rss", args.warmup),
                "changelog_growth": soak.growth("changelog", args.warmup),
                "samples": [asdict(s) for s in soak.samples],
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
