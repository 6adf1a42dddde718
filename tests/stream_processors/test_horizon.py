"""The risk table's replay horizon: a trace's state is kept long enough to recognise a replay, then dropped, so the
table (and what a restart reads back from its changelog) stays as large as the horizon's traffic, not as all the
traffic ever served. Before the horizon every finished trace was kept forever. The horizon is event time, measured
against how far the streams were read, so a backlog read after a long downtime keeps what it will still finish."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import ConfigResource
from confluent_kafka.cimpl import NewTopic

from evostream.core.bus.admin import admin_client
from evostream.core.bus.consumer import EventConsumer
from evostream.core.bus.producer import EventProducer
from evostream.core.settings import Settings
from evostream.schemas.catalog import COMPLETIONS, RISK, STEP_BLOCKS
from evostream.schemas.codec import RecordCodec
from evostream.schemas.samples import generation_step
from evostream.stream_processors.app import STEP_PARTITIONS, changelog_config
from evostream.stream_processors.risk.policy import RiskPolicy
from evostream.stream_processors.risk.tracker import TABLE, RiskTracker, StreamProgress, expired
from tests.stream_processors.harness import Worker, as_block, read

S = 1_000_000


def step(trace: str, i: int, at_us: int = 0) -> dict[str, Any]:
    rec = generation_step(i, trace)
    rec.update(model_version="m@1", entropy_bits=0.5, token_id=(i * 37 + 11) % 300, emitted_at_us=at_us)
    return rec


def completion(trace: str, n: int, at_us: int = 0) -> dict[str, Any]:
    return {
        "trace_id": trace,
        "request_id": f"req-{trace}",
        "reply_to": "x",
        "tenant": "t",
        "model_version": "m@1",
        "output_text": "ok",
        "token_count": n,
        "prompt_token_count": 3,
        "prompt_surprisal_bits": None,
        "prompt_embedding": [],
        "finish_reason": "STOP",
        "error": None,
        "timings": {"queue_us": 0, "prefill_us": 0, "decode_us": 0, "total_us": 0},
        "completed_at_us": at_us,
    }


def test_changelog_segments_roll_at_a_quarter_of_the_horizon_within_bounds() -> None:
    assert changelog_config(3600.0) == {
        "segment.ms": "900000",
        "min.cleanable.dirty.ratio": "0.1",
        "delete.retention.ms": "900000",
    }
    assert changelog_config(1.0)["segment.ms"] == "5000" and changelog_config(1e6)["segment.ms"] == "3600000"


def test_the_horizon_is_a_setting_of_an_hour_by_default() -> None:
    assert Settings().risk_replay_horizon_s == 3600.0
    assert Settings(risk_replay_horizon_s=2.5).risk_replay_horizon_s == 2.5


def test_a_replay_inside_the_horizon_is_still_recognised() -> None:
    tracker = RiskTracker({"*": RiskPolicy()})
    state = tracker.on_steps(None, [(step("t", 0), 10), (step("t", 1), 11)], 0 * S).state
    done = tracker.on_completion(json.loads(json.dumps(state)), completion("t", 2, 1 * S), 5, 1 * S)
    assert [r["stage"] for r in done.reports] == ["FINAL"]
    kept = json.loads(json.dumps(done.state))
    horizon = 3600 * S
    at = 1 * S + horizon  # the last moment inside the horizon
    assert not expired(kept, at, horizon)
    assert tracker.on_steps(kept, [(step("t", 0), 10), (step("t", 1), 11)], at).duplicates == 2
    replayed = tracker.on_completion(kept, completion("t", 2, 1 * S), 5, at)
    assert replayed.duplicates == 1 and not replayed.reports
    assert expired(kept, at + 1, horizon)


def test_an_unfinished_trace_is_given_up_after_the_horizon_and_an_active_one_is_not() -> None:
    tracker = RiskTracker({"*": RiskPolicy()})
    state = tracker.on_steps(None, [(step("t", 0), 0)], 0).state  # its completion never comes
    assert expired(state, 61 * S, 60 * S)
    later = tracker.on_steps(state, [(step("t", 1, 59 * S), 1)], 59 * S).state  # a step keeps it alive
    assert not expired(later, 61 * S, 60 * S)
    assert expired({"final": True}, time.time_ns() // 1000, 3600 * S)  # a state from before the horizon: first sweep


def test_the_table_stays_bounded_under_a_stream_of_unique_traces() -> None:
    """5 traces a second for 5 minutes of event time, a sweep every 15 s with a horizon of 60 s, as the app does
    it: the table never holds more than the horizon and one sweep interval of traces."""
    tracker = RiskTracker({"*": RiskPolicy()})
    table: dict[str, dict[str, Any]] = {}
    horizon, sweep, rate = 60 * S, 15 * S, 5
    largest = evicted = 0
    for n in range(300 * rate):
        now = n * S // rate
        trace = f"t{n}"
        state = tracker.on_steps(table.get(trace), [(step(trace, 0, now), n), (step(trace, 1, now), n)], now).state
        table[trace] = tracker.on_completion(state, completion(trace, 2, now), n, now).state
        if now % sweep == 0:
            gone = [k for k, st in table.items() if expired(st, now, horizon)]
            for k in gone:
                del table[k]
            evicted += len(gone)
        largest = max(largest, len(table))
    assert largest <= rate * (horizon + sweep) // S + 1
    assert evicted > 300 * rate - largest - 1


def test_a_backlog_read_after_a_long_downtime_keeps_the_traces_it_will_finish() -> None:
    """The processors were down two hours with a horizon of one; a trace's steps were folded before, its completion
    waits in the backlog. Old code: the first sweep after the restart measured the wall clock against the time its
    steps were folded, deleted the trace, and its FINAL never came."""
    tracker = RiskTracker({"*": RiskPolicy()})
    horizon, t0 = 3600 * S, 1_700_000_000 * S
    table = {"t": tracker.on_steps(None, [(step("t", 0, t0), 0), (step("t", 1, t0), 1)], t0).state}
    restart = t0 + 2 * 3600 * S
    assert expired(table["t"], restart, horizon)  # the wall clock's verdict: what the old sweep did

    def sweep(at: int | None) -> list[str]:  # as the app's timer does it
        gone = [] if at is None else [k for k, st in table.items() if expired(st, at, horizon)]
        for k in gone:
            del table[k]
        return gone

    progress = StreamProgress(("StepBlock", "Completion"))
    assert sweep(progress.now()) == []  # nothing read since the restart: nothing given up
    for n in range(1, 50):  # the backlog's steps are read faster than its completions
        progress.fold("StepBlock", t0 + n * 60 * S)
    progress.fold("Completion", t0 + 2 * S)
    assert progress.now() == t0 + 2 * S and sweep(progress.now()) == []
    done = tracker.on_completion(table["t"], completion("t", 2, t0 + 2 * S), 0, restart)
    assert [r["stage"] for r in done.reports] == ["FINAL"]
    table["t"] = done.state
    # the streams move on past the horizon: the finished trace goes
    for stream in progress.latest:
        progress.fold(stream, t0 + 2 * S + horizon + 1)
    assert sweep(progress.now()) == ["t"]


@pytest.mark.integration
def test_the_worker_drops_finished_traces_past_the_horizon_with_tombstones(kafka: str, tmp_path: Path) -> None:
    """Old code: every trace's state stayed on the changelog; no tombstone ever came."""
    run = uuid.uuid4().hex[:8]
    traces = [f"horizon-{run}-{k}" for k in range(5)]
    t0 = time.time_ns() // 1000
    w = Worker(kafka, tmp_path)
    w.env["EVOSTREAM_RISK_REPLAY_HORIZON_S"] = "4"
    w.start()
    try:
        producer = EventProducer(kafka)
        completion_codec = RecordCodec("Completion")
        for t in traces:
            producer.send(STEP_BLOCKS, t, as_block(*(step(t, i, t0) for i in range(2))))
            producer.send(COMPLETIONS, t, completion_codec.encode(completion(t, 2, t0)))
        producer.flush()
        finals = read(kafka, RISK, "RiskReport", lambda got: sum(r["trace_id"] in traces for r in got) >= 5)
        assert sorted(r["trace_id"] for r in finals if r["trace_id"] in traces) == sorted(traces)
        # inside the horizon, the same completion again is recognised: no second FINAL
        for t in traces[:2]:
            producer.send(COMPLETIONS, t, completion_codec.encode(completion(t, 2, t0)))
        # the streams move on past the horizon (event time): a later trace's steps and completion
        later = f"horizon-{run}-later"
        producer.send(STEP_BLOCKS, later, as_block(step(later, 0, t0 + 10 * S)))
        producer.send(COMPLETIONS, later, completion_codec.encode(completion(later, 1, t0 + 10 * S)))
        producer.flush()
        changelog = f"{w.env['EVOSTREAM_PROCESSORS_APP_ID']}-{TABLE}-changelog"
        last: dict[bytes, bytes | None] = {}
        with EventConsumer(kafka, f"test-{uuid.uuid4().hex}", [changelog]) as consumer:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not (
                set(last) >= {t.encode() for t in traces} and all(last[t.encode()] is None for t in traces)
            ):
                for m in consumer.poll_batch(1000, 0.5):
                    last[m.key()] = m.value()
        assert {t: last.get(t.encode(), b"absent") for t in traces} == dict.fromkeys(traces)  # tombstones
        # and the cleaner can act on them: the changelog's segments roll (old code: 7 days, so it never compacted)
        resource = ConfigResource(ConfigResource.Type.TOPIC, changelog)
        admin = admin_client(kafka)
        configs = admin.describe_configs([resource])[resource].result(timeout=10)
        assert {k: configs[k].value for k in changelog_config(4.0)} == changelog_config(4.0)
        assert configs["segment.ms"].value == "5000" and configs["cleanup.policy"].value == "compact"
        reports = read(kafka, RISK, "RiskReport", lambda got: False, timeout_s=3)
        assert sorted(r["trace_id"] for r in reports if r["trace_id"] in traces) == sorted(traces)
    finally:
        w.stop()


@pytest.mark.integration
def test_a_worker_sets_the_changelog_configs_on_changelogs_it_did_not_create(kafka: str, tmp_path: Path) -> None:
    """Old code: Faust's ``extra_topic_configs`` reach only the topics it creates; the changelog of a deployment from
    before them kept the broker's 7-day segments, so its tombstones were never compacted."""
    w = Worker(kafka, tmp_path)
    w.env["EVOSTREAM_RISK_REPLAY_HORIZON_S"] = "4"
    changelog = f"{w.env['EVOSTREAM_PROCESSORS_APP_ID']}-{TABLE}-changelog"
    admin = admin_client(kafka)  # the changelog as an older worker created it
    compact = {"cleanup.policy": "compact"}
    admin.create_topics([NewTopic(changelog, STEP_PARTITIONS, 1, config=compact)])[changelog].result(timeout=30)
    resource = ConfigResource(ConfigResource.Type.TOPIC, changelog)
    deadline = time.monotonic() + 30
    while True:  # a topic just created is described once its metadata has reached the broker
        try:
            before = admin.describe_configs([resource])[resource].result(timeout=10)
            break
        except KafkaException:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    assert before["segment.ms"].value == "604800000"  # the broker's default: 7 days
    w.start()
    try:
        configs = admin.describe_configs([resource])[resource].result(timeout=10)
        assert {k: configs[k].value for k in changelog_config(4.0)} == changelog_config(4.0)
        assert configs["cleanup.policy"].value == "compact"
    finally:
        w.stop()
