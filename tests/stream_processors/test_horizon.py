"""The risk table's replay horizon: a trace's state is kept long enough to recognise a replay, then dropped, so the
table (and what a restart reads back from its changelog) stays as large as the horizon's traffic, not as all the
traffic ever served. Before the horizon every finished trace was kept forever."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import ConfigResource

from evostream.core.bus.admin import admin_client
from evostream.core.bus.consumer import EventConsumer
from evostream.core.bus.producer import EventProducer
from evostream.core.settings import Settings
from evostream.schemas.catalog import COMPLETIONS, RISK, STEPS
from evostream.schemas.codec import RecordCodec
from evostream.schemas.samples import generation_step
from evostream.stream_processors.app import changelog_config
from evostream.stream_processors.risk.policy import RiskPolicy
from evostream.stream_processors.risk.tracker import TABLE, RiskTracker, expired
from tests.stream_processors.harness import Worker, read

S = 1_000_000


def step(trace: str, i: int) -> dict[str, Any]:
    rec = generation_step(i, trace)
    rec.update(model_version="m@1", entropy_bits=0.5, token_id=(i * 37 + 11) % 300)
    return rec


def completion(trace: str, n: int) -> dict[str, Any]:
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
        "completed_at_us": 0,
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
    done = tracker.on_completion(json.loads(json.dumps(state)), completion("t", 2), 5, 1 * S)
    assert [r["stage"] for r in done.reports] == ["FINAL"]
    kept = json.loads(json.dumps(done.state))
    horizon = 3600 * S
    at = 1 * S + horizon  # the last moment inside the horizon
    assert not expired(kept, at, horizon)
    assert tracker.on_steps(kept, [(step("t", 0), 10), (step("t", 1), 11)], at).duplicates == 2
    replayed = tracker.on_completion(kept, completion("t", 2), 5, at)
    assert replayed.duplicates == 1 and not replayed.reports
    assert expired(kept, at + 1, horizon)


def test_an_unfinished_trace_is_given_up_after_the_horizon_and_an_active_one_is_not() -> None:
    tracker = RiskTracker({"*": RiskPolicy()})
    state = tracker.on_steps(None, [(step("t", 0), 0)], 0).state  # its completion never comes
    assert expired(state, 61 * S, 60 * S)
    later = tracker.on_steps(state, [(step("t", 1), 1)], 59 * S).state  # a step keeps it alive
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
        state = tracker.on_steps(table.get(trace), [(step(trace, 0), n), (step(trace, 1), n)], now).state
        table[trace] = tracker.on_completion(state, completion(trace, 2), n, now).state
        if now % sweep == 0:
            gone = [k for k, st in table.items() if expired(st, now, horizon)]
            for k in gone:
                del table[k]
            evicted += len(gone)
        largest = max(largest, len(table))
    assert largest <= rate * (horizon + sweep) // S + 1
    assert evicted > 300 * rate - largest - 1


@pytest.mark.integration
def test_the_worker_drops_finished_traces_past_the_horizon_with_tombstones(kafka: str, tmp_path: Path) -> None:
    """Old code: every trace's state stayed on the changelog; no tombstone ever came."""
    run = uuid.uuid4().hex[:8]
    traces = [f"horizon-{run}-{k}" for k in range(5)]
    w = Worker(kafka, tmp_path)
    w.env["EVOSTREAM_RISK_REPLAY_HORIZON_S"] = "4"
    w.start()
    try:
        producer = EventProducer(kafka)
        step_codec, completion_codec = RecordCodec("GenerationStep"), RecordCodec("Completion")
        for t in traces:
            for i in range(2):
                producer.send(STEPS, t, step_codec.encode(step(t, i)))
            producer.send(COMPLETIONS, t, completion_codec.encode(completion(t, 2)))
        producer.flush()
        finals = read(kafka, RISK, "RiskReport", lambda got: sum(r["trace_id"] in traces for r in got) >= 5)
        assert sorted(r["trace_id"] for r in finals if r["trace_id"] in traces) == sorted(traces)
        # inside the horizon, the same completion again is recognised: no second FINAL
        for t in traces[:2]:
            producer.send(COMPLETIONS, t, completion_codec.encode(completion(t, 2)))
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
