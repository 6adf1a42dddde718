"""Chaos: the broker killed and paused while the whole pipeline runs, and every record accounted for by id.

One private broker (the project's own launcher, on fixed ports so that a restart comes back at the same address)
carries ``evostream serve``, ``evostream process`` and ``evostream sinks run --sinks sqlite``, each a real process as
users run them. A client publishes requests with unique ids in rounds; in each round the inference service is
killed (SIGKILL, then started again) while it generates, then the broker is killed (SIGKILL, then restarted by the
launcher) while requests are being served, and paused (SIGSTOP, then SIGCONT) while a governance append is under
way. Afterwards every record is accounted for:

- every request has its Completion on ``evo.completions`` (lost 0); extra copies are at-least-once duplicates of the
  inference service (a request generated again after its offset commit was lost), counted, and recognised
  downstream by their request id: the client takes the first, and the SQLite sink's distinct request ids equal the
  requests sent;
- the SQLite sink holds one row per Completion record on the topic (it commits its positions with its rows: 0 lost,
  0 doubled);
- every completed trace has a FINAL risk report from the stream processors; extra FINALs (at-least-once
  outputs) are counted;
- the governance log replays with ``--verify`` (the hash chain intact) and each append made under a pause is in
  it exactly once (a transactional write: a failed attempt leaves nothing, a retried one lands once).

    python -m bench.chaos --requests 120 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.pipeline import Pipeline, answered, read_topic, sqlite_counts
from evostream.producers.client import InferenceClient
from evostream.schemas.catalog import COMPLETIONS, RISK


@dataclass
class Figures:
    """What one chaos run injected and how every record came out."""

    requests: int = 0
    kills: int = 0
    service_kills: int = 0
    pauses: int = 0
    pause_s: float = 0.0
    completions: int = 0
    answered: int = 0
    lost: int = 0
    duplicates: int = 0
    sqlite_rows: int = 0
    sqlite_requests: int = 0
    final_reports: int = 0
    final_duplicates: int = 0
    governance_appends: int = 0
    governance_attempts: int = 0
    governance_events: int = 0
    """Appends made under a pause found in the log, each exactly once (negative: some were there twice)."""
    chain_verified: bool = False
    restart_s: list[float] = field(default_factory=list)


def governance_append(pipe: Pipeline, approvals: int, figures: Figures) -> None:
    """A policy change made while the broker is paused: retried until it lands (a failed try leaves nothing)."""
    for _ in range(5):
        figures.governance_attempts += 1
        done = pipe.cli("governance", "policy", "--approvals", str(approvals), "--reason", f"chaos {approvals}")
        if done.returncode == 0:
            figures.governance_appends += 1
            return
        time.sleep(1.0)
    raise RuntimeError(f"the governance append never landed: {done.stderr.strip()}")


def run(root: Path, requests: int, rounds: int, pause_s: float, max_new_tokens: int = 6) -> Figures:
    figures = Figures(requests=requests + 1)  # and one warm-up request
    pipe = Pipeline(root)
    try:
        pipe.up()
        client = InferenceClient(pipe.bootstrap)
        replies = [client.submit("chaos warm-up: what is one plus one?", max_new_tokens=max_new_tokens)]
        pipe.await_ready(replies[0], root / "sinks" / "sqlite" / "evostream.db")
        per_round = max(1, requests // rounds)
        for r in range(rounds):
            n = per_round if r < rounds - 1 else requests - per_round * (rounds - 1)
            prompts = [f"chaos round {r} request {i}: what is {i} plus {r}?" for i in range(n)]
            replies += [client.submit(p, max_new_tokens=max_new_tokens) for p in prompts]
            time.sleep(1.5)  # the service is generating this round's requests
            pipe.kill_service("serve", "serving ")  # what it generated but did not commit is generated again
            figures.service_kills += 1
            time.sleep(1.5)
            figures.restart_s.append(round(pipe.kill_broker(), 2))
            figures.kills += 1
            pipe.check_alive()
            writer = threading.Thread(target=governance_append, args=(pipe, 2 + r, figures))
            with pipe.paused_broker():
                writer.start()
                time.sleep(pause_s)
            figures.pauses += 1
            figures.pause_s += pause_s
            writer.join(300)
            pipe.check_alive()
        figures.answered = sum(answered(reply) for reply in replies)
        completions = read_topic(pipe.bootstrap, COMPLETIONS, "Completion", figures.requests, 120)
        by_request = Counter(str(c["request_id"]) for c in completions)
        sent = {reply.request_id for reply in replies}
        figures.completions = len(completions)
        figures.lost = len(sent - set(by_request))
        figures.duplicates = sum(n - 1 for rid, n in by_request.items() if rid in sent)
        reports = read_topic(pipe.bootstrap, RISK, "RiskReport", len(completions), 120)
        finals = Counter(str(x["trace_id"]) for x in reports if x["stage"] == "FINAL")
        figures.final_reports = len({str(c["trace_id"]) for c in completions} & set(finals))
        figures.final_duplicates = sum(finals.values()) - len(finals)
        db = root / "sinks" / "sqlite" / "evostream.db"
        deadline = time.monotonic() + 120
        while sqlite_counts(db)[0] < len(completions) and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(2.0)  # a doubled write would land now
        figures.sqlite_rows, figures.sqlite_requests = sqlite_counts(db)
        verify = pipe.cli("replay", "--verify")
        figures.chain_verified = verify.returncode == 0
        audit = pipe.cli("audit")
        reasons = Counter(line.rsplit(": ", 1)[-1] for line in audit.stdout.splitlines() if ": chaos " in line)
        figures.governance_events = len(reasons) if set(reasons.values()) == {1} else -sum(reasons.values())
        pipe.check_alive()
    finally:
        pipe.down()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=120)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pause-s", type=float, default=8.0)
    parser.add_argument("--root", type=Path, default=None, help="working folder (default: a fresh temporary one)")
    args = parser.parse_args()
    root = args.root or Path(os.environ.get("TMPDIR", "/tmp")) / f"evostream-chaos-{uuid.uuid4().hex[:8]}"
    figures = run(root, args.requests, args.rounds, args.pause_s)
    print(json.dumps(asdict(figures), indent=2))


if __name__ == "__main__":
    main()
