"""The rollout bench's grader on the real broker: a record on evo.completions that is not a Completion (another
test's poison, a foreign producer) is skipped and counted, and the answers after it are still graded."""

from __future__ import annotations

import time
import uuid

from bench.rollout import Grader
from evostream.core.bus.producer import EventProducer
from evostream.schemas.catalog import COMPLETIONS, OUTCOMES
from evostream.schemas.codec import RecordCodec
from evostream.schemas.samples import completion
from tests.stream_processors.harness import read


def test_the_grader_skips_undecodable_records_and_grades_what_follows(kafka: str) -> None:
    tag = uuid.uuid4().hex[:8]
    right, wrong = completion(0), completion(2)
    for c, name in ((right, "right"), (wrong, "wrong")):
        c.update(request_id=f"grade-{name}-{tag}", trace_id=f"grade-{name}-{tag}", role="ANSWER")
    producer = EventProducer(kafka)
    codec = RecordCodec("Completion")
    producer.send(COMPLETIONS, right["trace_id"], b"not avro at all")
    producer.send(COMPLETIONS, right["trace_id"], codec.encode(right))
    producer.send(COMPLETIONS, wrong["trace_id"], codec.encode(wrong))
    producer.flush()
    grader = Grader(kafka, {right["request_id"]: right["output_text"], wrong["request_id"]: "another answer"})
    grader.start()
    try:
        deadline = time.monotonic() + 60
        while grader.labelled < 2 and grader.is_alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert grader.is_alive(), "the grader thread died"
        assert grader.labelled == 2 and grader.undecodable >= 1, (grader.labelled, grader.undecodable)
        mine = {right["trace_id"], wrong["trace_id"]}
        labels = read(kafka, OUTCOMES, "Outcome", lambda got: len([o for o in got if o["trace_id"] in mine]) >= 2)
        got = {o["trace_id"]: o["label"] for o in labels if o["trace_id"] in mine}
        assert got == {right["trace_id"]: "RIGHT", wrong["trace_id"]: "WRONG"}, got
    finally:
        grader.halt.set()
        grader.join(30)
