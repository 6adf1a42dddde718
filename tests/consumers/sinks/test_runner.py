"""The sink runner against the real broker and real SQLite sinks: decode, deliver, dead-letter, commit after the
durable write; and one sink's failure holds back no other."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from evostream.consumers.sinks.delivery import Backoff
from evostream.consumers.sinks.runner import RunnerOptions, SinkRunner
from evostream.core.bus.consumer import EventConsumer
from evostream.core.errors import ConsumeError
from evostream.plugins.api import SinkContext
from evostream.plugins.sqlite import SqliteSink, connect
from evostream.schemas.catalog import ALERTS, DLQ, RISK
from evostream.schemas.codec import RecordCodec
from tests.plugins.kafka import committed, count_rows, marked, produce

pytestmark = pytest.mark.integration
FAST = RunnerOptions(max_records=2000, max_wait_s=0.2, backoff=Backoff(0.05, 0.2))


def wait_for(what: Callable[[], bool], timeout_s: float = 60.0, why: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not what():
        if time.monotonic() > deadline:
            raise TimeoutError(why or "condition not met")
        time.sleep(0.2)


@contextlib.contextmanager
def running(runner: SinkRunner) -> Iterator[SinkRunner]:
    errors: list[BaseException] = []

    def work() -> None:
        try:
            runner.run()
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=work, daemon=True)
    t.start()
    try:
        yield runner
    finally:
        runner.stop()
        t.join(30)
        assert not t.is_alive(), "the runner did not stop"
    assert not errors, errors


def dead_letters(kafka: str, consumer: str, expected: int) -> list[dict[str, Any]]:
    codec = RecordCodec("DeadLetter")
    out: list[dict[str, Any]] = []
    with EventConsumer(kafka, f"read-{uuid.uuid4().hex}", [DLQ]) as c:
        deadline = time.monotonic() + 30
        while len(out) < expected and time.monotonic() < deadline:
            out += [d for m in c.poll_batch(1000, 0.3) if (d := codec.decode(m.value() or b""))["consumer"] == consumer]
    return out


def sqlite_sink(path: Path, busy_ms: str = "2000") -> SqliteSink:
    return SqliteSink(SinkContext("sqlite", path.parent, {"path": str(path), "busy_timeout_ms": busy_ms}))


def test_records_are_stored_poison_and_garbage_dead_lettered_and_offsets_committed(kafka: str, tmp_path: Path) -> None:
    marker = uuid.uuid4().hex[:8]
    values = marked(SqliteSink.topics, 3, marker)
    produce(kafka, values, garbage={RISK: 2}, marker=marker)
    db = tmp_path / "r.db"
    sink = sqlite_sink(db)
    with contextlib.closing(connect(db)) as c:  # the database refuses one of this run's alerts
        c.execute(
            f"CREATE TRIGGER refuse BEFORE INSERT ON alerts WHEN NEW.trace_id = '{marker}-trace-2' "
            "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        )
    group = f"test-sink-{marker}"
    like = f"{marker}-%"
    with running(SinkRunner(kafka, sink, FAST, group=group)) as runner:
        wait_for(lambda: count_rows(db, "governance_events", "event_id LIKE ?", like) == 3, why="rows not stored")
        wait_for(lambda: runner.stats.commits > 0 and runner.stats.batches == runner.stats.commits)
    counts = {t: count_rows(db, t, "trace_id LIKE ?", like) for t in ("traces", "risk_reports", "alerts")}
    counts["drift_windows"] = count_rows(db, "drift_windows", "model_version LIKE ?", like)
    counts["profiles"] = count_rows(db, "profiles", "model_version LIKE ?", like)
    assert counts == {"traces": 3, "risk_reports": 3, "alerts": 2, "drift_windows": 3, "profiles": 3}

    dead = dead_letters(kafka, group, 3)
    mine = sorted(
        (d["source_topic"], d["error_type"], (d["original_key"] or b"").decode())
        for d in dead
        if (d["original_key"] or b"").decode().startswith(marker)
    )
    assert mine == [
        (ALERTS, "SinkError", f"{marker}-trace-2"),
        (RISK, "BadMagicError", f"{marker}-garbage-0"),
        (RISK, "BadMagicError", f"{marker}-garbage-1"),
    ]
    refused = next(d for d in dead if d["original_key"] == f"{marker}-trace-2".encode())
    assert "refused by the test" in refused["error"] and refused["raw_value"]

    # the group committed every partition at least as far as the sink's own positions, and further exactly where
    # the runner dead-lettered undecodable records without handing them to the sink; the sink's position stays at
    # the record it refused (its dead letter was sent after the write), the group's moved past it
    with contextlib.closing(sqlite_sink(db)) as again:
        own = dict(again.positions())
    junk = [
        d for d in dead if d["error_type"] == "BadMagicError" and (d["original_key"] or b"").startswith(marker.encode())
    ]
    garbage = Counter((d["source_topic"], d["partition"]) for d in junk)
    group_at = committed(kafka, group, list(set(own) | set(garbage)))
    held = (ALERTS, refused["partition"])
    assert own[held] == refused["offset"] < group_at[held]
    assert {tp: at - own[tp] for tp, at in group_at.items() if tp in own and at != own[tp] and tp != held} == Counter(
        {tp: n for tp, n in garbage.items() if tp in own}
    )
    for tp in set(garbage) - set(own):  # a partition that held nothing but garbage: the sink never saw it
        assert group_at[tp] == max(d["offset"] for d in junk if (d["source_topic"], d["partition"]) == tp) + 1


def test_a_sink_that_cannot_write_holds_back_no_other(kafka: str, tmp_path: Path) -> None:
    marker = uuid.uuid4().hex[:8]
    produce(kafka, marked(SqliteSink.topics, 2, marker), marker=marker)
    good_db, stuck_db = tmp_path / "good.db", tmp_path / "stuck.db"
    good, stuck = sqlite_sink(good_db), sqlite_sink(stuck_db, busy_ms="20")
    lock = connect(stuck_db)
    lock.execute("BEGIN IMMEDIATE")  # another writer holds the stuck sink's database
    like = f"{marker}-%"
    stuck_group = f"test-stuck-{marker}"
    with (
        running(SinkRunner(kafka, good, FAST, group=f"test-good-{marker}")),
        running(SinkRunner(kafka, stuck, FAST, group=stuck_group)) as held,
    ):
        wait_for(lambda: count_rows(good_db, "traces", "trace_id LIKE ?", like) == 2, why="the good sink was held back")
        wait_for(lambda: held.stats.retries >= 3, why="the stuck sink was not retried")
        assert count_rows(stuck_db, "traces", "trace_id LIKE ?", like) == 0
        assert held.stats.commits == 0
        lock.execute("ROLLBACK")  # the other writer lets go: the stuck sink catches up with nothing lost
        wait_for(lambda: count_rows(stuck_db, "traces", "trace_id LIKE ?", like) == 2, why="still stuck")
        wait_for(lambda: held.stats.commits > 0)
    lock.close()
    assert count_rows(stuck_db, "governance_events", "event_id LIKE ?", like) == 2


def test_until_idle_returns_once_the_sink_has_caught_up(kafka: str, tmp_path: Path) -> None:
    marker = uuid.uuid4().hex[:8]
    produce(kafka, marked(SqliteSink.topics, 2, marker), marker=marker)
    db = tmp_path / "r.db"
    runner = SinkRunner(kafka, sqlite_sink(db), FAST, group=f"test-idle-{marker}")
    stats = runner.run(until_idle=True)  # returns by itself: no stop() anywhere
    assert stats.commits >= 1 and stats.records >= 12
    assert count_rows(db, "traces", "trace_id LIKE ?", f"{marker}-%") == 2
    assert count_rows(db, "governance_events", "event_id LIKE ?", f"{marker}-%") == 2


def test_a_poll_that_fails_after_fetching_loses_nothing(kafka: str, tmp_path: Path) -> None:
    marker = uuid.uuid4().hex[:8]
    produce(kafka, marked(SqliteSink.topics, 3, marker), marker=marker)
    db = tmp_path / "r.db"
    runner = SinkRunner(kafka, sqlite_sink(db), FAST, group=f"test-rewind-{marker}")
    real, dropped = runner._consumer.poll_batch, []

    def poll_then_fail(max_records: int, timeout_s: float) -> list[Any]:
        msgs = real(max_records, timeout_s)
        mine = [m for m in msgs if (m.key() or b"").startswith(marker.encode())]
        if mine and not dropped:  # the fault lands on a poll that fetched this test's records: they go with it
            dropped.extend(mine)
            raise ConsumeError("injected: a partition error in the same fetch")
        return msgs

    runner._consumer.poll_batch = poll_then_fail  # type: ignore[method-assign]
    stats = runner.run(until_idle=True)
    assert dropped and stats.rewinds == 1
    like = f"{marker}-%"
    counts = {t: count_rows(db, t, "trace_id LIKE ?", like) for t in ("traces", "risk_reports", "alerts")}
    assert counts == {"traces": 3, "risk_reports": 3, "alerts": 3}
    assert count_rows(db, "governance_events", "event_id LIKE ?", like) == 3
