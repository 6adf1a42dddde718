"""``evostream feedback`` on the real broker: a label on evo.outcomes, a retry recorded once, clear refusals."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

from evostream.core.bus.producer import EventProducer
from evostream.schemas.catalog import COMPLETIONS
from evostream.schemas.codec import RecordCodec
from evostream.schemas.records import Completion
from evostream.schemas.samples import completion
from evostream.stream_processors.risk.outcomes import OutcomeBook
from evostream.views.outcomes import read_outcomes

CLI = [sys.executable, "-m", "evostream.cli"]


def feedback(kafka: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EVOSTREAM_GOVERNANCE_ACTOR": "carol"}
    cmd = [*CLI, "feedback", *args, "--bootstrap", kafka, "--timeout", "20"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)


def a_logged_trace(kafka: str) -> Completion:
    rec = completion(1)
    rec["trace_id"] = f"cli-feedback-{uuid.uuid4().hex[:8]}"
    producer = EventProducer(kafka)
    producer.send(COMPLETIONS, rec["trace_id"], RecordCodec.of(Completion).encode(rec))
    producer.flush(30)
    return rec


def book_of(kafka: str, trace_id: str) -> OutcomeBook:
    return read_outcomes(kafka, lambda rec: rec["trace_id"] == trace_id, timeout_s=60)


def test_a_label_and_its_retry_are_one_and_a_change_of_mind_stands(kafka: str) -> None:
    done = a_logged_trace(kafka)
    trace = done["trace_id"]
    first = feedback(kafka, trace, "--wrong", "--note", "off by one", "--id", "retry-me")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "retry-me"
    assert f"({done['model_version']}) WRONG by carol" in first.stderr
    again = feedback(kafka, trace, "--wrong", "--note", "off by one", "--id", "retry-me")
    assert again.returncode == 0, again.stderr
    graded = feedback(kafka, trace, "--score", "0.75")
    assert graded.returncode == 0, graded.stderr
    book = book_of(kafka, trace)
    assert book.retries == 1
    (standing,) = book.labels(trace)
    assert (standing.actor, standing.label, standing.score) == ("carol", "GRADED", 0.75)


def test_an_unknown_trace_and_a_label_outside_the_set_are_clear_errors(kafka: str) -> None:
    unknown = feedback(kafka, "no-such-trace", "--right")
    assert unknown.returncode == 1 and "no trace no-such-trace on evo.completions" in unknown.stderr
    trace = a_logged_trace(kafka)["trace_id"]
    both = feedback(kafka, trace, "--right", "--wrong")
    assert both.returncode == 1 and "exactly one of --right, --wrong and --score" in both.stderr
    out_of_range = feedback(kafka, trace, "--score", "1.5")
    assert out_of_range.returncode == 1 and "score in [0, 1]" in out_of_range.stderr
    assert len(book_of(kafka, trace)) == 0
