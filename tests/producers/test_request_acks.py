"""RequestAcks: a routed request is done once its final record and every record sent before it are acknowledged,
whatever order the acknowledgements come in."""

from __future__ import annotations

from evostream.producers.offsets import RequestAcks


def test_a_request_is_done_only_when_its_final_record_and_every_earlier_one_are_acknowledged() -> None:
    done: list[str] = []
    acks = RequestAcks(done.append)
    for _ in range(4):  # a decision before, a decision during, the partial answer, the final answer
        acks.sent("r")
    acks.acked("r", final=True)  # the final answer's acknowledgement comes first
    acks.acked("r", final=False)
    acks.acked("r", final=False)
    assert done == [] and acks.waiting == 1
    acks.acked("r", final=False)
    assert done == ["r"] and acks.waiting == 0


def test_records_acknowledged_before_the_final_one_is_sent_do_not_finish_the_request() -> None:
    done: list[str] = []
    acks = RequestAcks(done.append)
    acks.sent("r")
    acks.acked("r", final=False)  # the decision, acknowledged while the reference still answers
    assert done == []
    acks.sent("r")
    acks.acked("r", final=True)
    assert done == ["r"]
