"""``deliver``'s decisions on answers a real sink could give but the contract sinks do not provoke: a sink that names
poison outside its batch or twice, and a retry count far past any realistic outage."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from evostream.consumers.sinks.contract import Record, Result
from evostream.consumers.sinks.delivery import Backoff, deliver
from evostream.plugins.api import Sink, SinkContext
from tests.plugins.samples import sample_records


class Answers(Sink):
    """A sink that answers each write with the next of ``answers`` (the runner's input, not a stand-in for one)."""

    topics = ("evo.completions",)

    def __init__(self, answers: list[Result]) -> None:
        super().__init__(SinkContext("answers", Path("."), {}))
        self.answers = answers
        self.writes = 0

    def write(self, records: Sequence[Record]) -> Result:
        self.writes += 1
        return self.answers.pop(0)


def test_backoff_doubles_up_to_its_cap_and_never_overflows() -> None:
    b = Backoff(base_s=0.5, max_s=30.0)
    assert [b.delay(n) for n in (1, 2, 3, 7, 8)] == [0.5, 1.0, 2.0, 30.0, 30.0]
    assert b.delay(1026) == 30.0 and b.delay(10**9) == 30.0  # an outage of days: 2.0 ** 1025 would overflow
    assert b.delay(0) == 0.5


def test_poison_named_outside_the_batch_dead_letters_the_whole_batch() -> None:
    batch, stranger = sample_records(("evo.completions",), 4), sample_records(("evo.completions",), 1, first=50)
    dead: list[tuple[Record, str]] = []
    out = deliver(Answers([Result.failed("bad", stranger)]), batch, lambda r, why: dead.append((r, why)))
    assert [r.key for r, _ in dead] == [r.key for r in batch] and out.applied == 0


def test_poison_named_twice_is_dead_lettered_once() -> None:
    batch = sample_records(("evo.completions",), 4)
    dead: list[tuple[Record, str]] = []
    out = deliver(
        Answers([Result.failed("bad", [batch[1], batch[1], batch[3]])]), batch, lambda r, why: dead.append((r, why))
    )
    assert [r.key for r, _ in dead] == [batch[1].key, batch[3].key]
    assert out.applied == 2 and out.attempts == 1


def test_retryable_answers_wait_by_the_backoff_then_apply() -> None:
    batch = sample_records(("evo.completions",), 2)
    waits: list[float] = []
    sink = Answers([Result.retry("down"), Result.retry("down"), Result.retry("down"), Result.ok()])
    out = deliver(sink, batch, lambda r, why: None, Backoff(0.1, 0.3), waits.append)
    assert waits == [0.1, 0.2, 0.3] and out.applied == 2 and out.reasons == ["down"] * 3
    assert sink.writes == 4


class Refuses(Sink):
    """A sink that raises on any batch holding one of ``bad`` (as a counter refusing a negative amount does), and
    applies the others: what it applied, by record key."""

    topics = ("evo.completions",)

    def __init__(self, bad: set[str]) -> None:
        super().__init__(SinkContext("refuses", Path("."), {}))
        self.bad = bad
        self.applied: list[str] = []

    def write(self, records: Sequence[Record]) -> Result:
        if any(r.key in self.bad for r in records):
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self.applied += [r.key for r in records]
        return Result.ok()


def test_a_batch_that_raises_is_split_until_only_the_records_that_raise_are_dead_lettered() -> None:
    batch = sample_records(("evo.completions",), 9)
    sink = Refuses({batch[2].key, batch[7].key})
    dead: list[tuple[Record, str]] = []
    out = deliver(sink, batch, lambda r, why: dead.append((r, why)))
    assert [r.key for r, _ in dead] == [batch[2].key, batch[7].key]
    assert all(why == "ValueError: Counters can only be incremented by non-negative amounts." for _, why in dead)
    assert sorted(sink.applied) == sorted(r.key for i, r in enumerate(batch) if i not in (2, 7))
    assert out.applied == 7 and not out.stopped
