"""The one contract test every sink passes, built-in or third-party: subclass ``SinkContract`` in a ``Test...`` class,
say how to build the sink and how to look into its real destination, and pytest runs every check below on it.

    class TestMySink(SinkContract):
        sink_name = "mysink"
        def make_sink(self, ctx): return MySink(ctx)
        def stored(self, sink): ...            # what the destination holds, one entry per applied record
        def failing(self, sink, kind, times): ...  # make the destination fail the next ``times`` writes

What it checks (``consumers.sinks.contract`` states the promises): each record applied once, a redelivered batch
changes nothing, a durable sink reopened sees everything, flush and close behave (close leaves no thread and no
child process behind), bad options are a ``SinkConfigError``, a retryable failure driven through ``deliver`` (the
runner's own logic) is retried until it succeeds and a permanent one is dead-lettered with the sink's reason."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import ClassVar, Literal

import pytest

from evostream.consumers.sinks.contract import Record, Status
from evostream.consumers.sinks.delivery import Backoff, deliver
from evostream.core.errors import SinkConfigError, SinkError
from evostream.plugins.api import Sink, SinkContext
from evostream.schemas.catalog import CATALOG
from tests.plugins.samples import sample_records

Kind = Literal["retryable", "permanent"]
FAST = Backoff(base_s=0.01, max_s=0.05)


def children() -> set[int]:
    """The live child processes of this process (zombies excluded)."""
    me, out = str(os.getpid()), set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[1] == me and fields[0] != "Z":
            out.add(int(pid))
    return out


class SinkContract:
    """Base of every sink's contract test (not collected by itself: its name does not start with ``Test``)."""

    sink_name: ClassVar[str]
    durable: ClassVar[bool] = True
    """False when a new instance on the same options cannot see what an earlier one wrote (a /metrics endpoint)."""
    per_topic: ClassVar[int] = 3
    retryable: ClassVar[str] = ""
    """Why the destination cannot fail retryably, when it cannot (in-memory metrics); empty: it can, and ``failing``
    makes it."""

    # -- what a sink's test provides ------------------------------------------------------------------------------

    def options(self, tmp_path: Path) -> dict[str, str]:
        return {}

    def make_sink(self, ctx: SinkContext) -> Sink:
        raise NotImplementedError

    def stored(self, sink: Sink) -> Counter[str]:
        """What the real destination holds: one entry per applied record, doubles counted."""
        raise NotImplementedError

    def expected(self, records: Sequence[Record]) -> Counter[str]:
        """What ``stored`` must hold once ``records`` were applied once each."""
        return Counter(r.key for r in records)

    def failing(self, sink: Sink, kind: Kind, times: int) -> contextlib.AbstractContextManager[None]:
        """Make the real destination fail the next ``times`` writes the given way; restore it on exit."""
        raise NotImplementedError

    def bad_options(self, tmp_path: Path) -> dict[str, str] | None:
        """Options the sink must refuse with SinkConfigError when it is built; None when it takes none."""
        return None

    def samples(self, sink: Sink, first: int = 0) -> list[Record]:
        return sample_records(sink.topics, self.per_topic, first)

    # -- fixtures -------------------------------------------------------------------------------------------------

    def context(self, tmp_path: Path) -> SinkContext:
        return SinkContext(self.sink_name, tmp_path / "data", self.options(tmp_path))

    @pytest.fixture
    def sink(self, tmp_path: Path) -> Iterator[Sink]:
        (tmp_path / "data").mkdir(exist_ok=True)
        s = self.make_sink(self.context(tmp_path))
        try:
            yield s
        finally:
            s.close()

    # -- the contract ---------------------------------------------------------------------------------------------

    def test_is_a_sink_of_known_topics(self, sink: Sink) -> None:
        assert isinstance(sink, Sink)
        assert sink.name == self.sink_name
        assert sink.topics and set(sink.topics) <= {s.name for s in CATALOG}

    def test_each_record_is_applied_once(self, sink: Sink) -> None:
        recs = self.samples(sink)
        assert sink.write(recs).status is Status.OK
        assert sink.flush().status is Status.OK
        assert self.stored(sink) == self.expected(recs)

    def test_a_redelivered_batch_changes_nothing(self, sink: Sink) -> None:
        recs = self.samples(sink)
        assert sink.write(recs[: len(recs) // 2]).status is Status.OK
        assert sink.write(recs).status is Status.OK  # the first half again, with the rest
        assert sink.write(recs).status is Status.OK
        assert sink.flush().status is Status.OK
        assert self.stored(sink) == self.expected(recs)

    def test_a_reopened_sink_sees_everything_and_ignores_redelivery(self, tmp_path: Path) -> None:
        if not self.durable:
            pytest.skip(f"{self.sink_name} keeps nothing across instances (durable = False)")
        (tmp_path / "data").mkdir(exist_ok=True)
        first = self.make_sink(self.context(tmp_path))
        recs = self.samples(first)
        try:
            assert first.write(recs).status is Status.OK
        finally:
            first.close()
        second = self.make_sink(self.context(tmp_path))
        try:
            assert second.write(recs).status is Status.OK  # what a restart after a lost commit redelivers
            assert second.flush().status is Status.OK
            assert self.stored(second) == self.expected(recs)
        finally:
            second.close()

    def test_close_releases_every_thread_and_process(self, tmp_path: Path) -> None:
        threads, procs = set(threading.enumerate()), children()
        (tmp_path / "data").mkdir(exist_ok=True)
        s = self.make_sink(self.context(tmp_path))
        assert s.write(self.samples(s)).status is Status.OK
        s.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            left = [t for t in threading.enumerate() if t not in threads and t.is_alive()]
            born = children() - procs
            if not left and not born:
                break
            time.sleep(0.1)
        assert not left, f"threads left after close(): {[t.name for t in left]}"
        assert not born, f"child processes left after close(): {sorted(born)}"

    def test_bad_options_are_a_config_error(self, tmp_path: Path) -> None:
        bad = self.bad_options(tmp_path)
        if bad is None:
            pytest.skip(f"{self.sink_name} takes no option that can be wrong")
        (tmp_path / "data").mkdir(exist_ok=True)
        with pytest.raises(SinkConfigError) as err:
            self.make_sink(SinkContext(self.sink_name, tmp_path / "data", bad)).close()
        assert isinstance(err.value, SinkError) and self.sink_name in str(err.value)

    def test_a_retryable_failure_is_retried_until_it_succeeds(self, sink: Sink) -> None:
        if self.retryable:
            pytest.skip(f"{self.sink_name} cannot fail retryably: {self.retryable}")
        recs = self.samples(sink)
        dead: list[tuple[Record, str]] = []
        with self.failing(sink, "retryable", times=2):
            out = deliver(sink, recs, lambda r, why: dead.append((r, why)), FAST)
        assert out.attempts == 3 and len(out.reasons) == 2 and all(out.reasons), out
        assert not dead and out.applied == len(recs)
        assert sink.flush().status is Status.OK
        assert self.stored(sink) == self.expected(recs)

    def test_a_permanent_failure_is_dead_lettered_and_never_stored(self, sink: Sink) -> None:
        recs = self.samples(sink)
        dead: list[tuple[Record, str]] = []
        with self.failing(sink, "permanent", times=1):
            out = deliver(sink, recs, lambda r, why: dead.append((r, why)), FAST)
        assert out.attempts == 1 and dead, out
        assert all(why for _, why in dead)
        assert len({r.key for r, _ in dead}) == len(dead)  # each poison record once
        good = [r for r in recs if r.key not in {d.key for d, _ in dead}]
        assert out.applied == len(good)
        assert sink.flush().status is Status.OK
        assert self.stored(sink) == self.expected(good)
        # and the sink still works afterwards
        more = self.samples(sink, first=self.per_topic)
        assert sink.write(more).status is Status.OK and sink.flush().status is Status.OK
        assert self.stored(sink) == self.expected(good) + self.expected(more)
