"""Semantic poison for the stream agents (risk, drift, profiling), on the real broker with the worker as users run
it: valid Avro that contradicts itself, does not fit the trace or window it joins, or sits at a limit. Every poison
record is dead-lettered once, with its reason; the good records after it on the same partition are still folded
(no partition blocked); the worker stays up; and every record sent is accounted for by its output: a FINAL with
the steps folded, a drift report, a profile with the steps and neuron counts folded, or a dead letter.

On the code before the checks (fd1f606 and later), the inconsistent records stopped the agent that folded them:
the first batch with a step of another shape lost its other traces' FINALs, and nothing was dead-lettered."""

from __future__ import annotations

import math
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from evostream.core.bus.producer import EventProducer
from evostream.schemas.catalog import COMPLETIONS, DLQ, DRIFT, NEURONS, PROFILES, RISK, STEP_BLOCKS
from evostream.schemas.codec import RecordCodec
from evostream.schemas.deadletter import KEEP_BYTES
from evostream.schemas.samples import generation_step
from evostream.schemas.tensors import pack_f32
from tests.stream_processors.harness import Worker, as_block, read

pytestmark = pytest.mark.integration

COMPLETION, NEURON = RecordCodec("Completion"), RecordCodec("NeuronCounts")
UNMEASURED = {
    "layer_hidden_l2": b"",
    "layer_hidden_maxabs": b"",
    "ffn_sparsity": b"",
    "head_attention_entropy": b"",
    "layer_nonfinite": [],
}


@pytest.fixture
def worker(kafka: str, tmp_path: Path) -> Iterator[Worker]:
    w = Worker(kafka, tmp_path)
    w.env.update({"EVOSTREAM_DRIFT_REFERENCE_SIZE": "20", "EVOSTREAM_DRIFT_WINDOW_SIZE": "20"})
    w.start()
    yield w
    w.stop()


class Traffic:
    """What the test sends, each record with the fate it must meet."""

    def __init__(self, kafka: str, model: str, t0_us: int) -> None:
        self.producer = EventProducer(kafka)
        self.model, self.t0 = model, t0_us
        self.dead: dict[bytes, str] = {}
        """Raw value of each poison record -> a word its dead letter's reason must hold."""
        self.finals: dict[str, int] = {}
        """Trace -> the steps its one FINAL report must count."""

    def step(self, trace: str, i: int, dead: str = "", layers: int = 4, heads: int = 4, **changes: Any) -> None:
        rec = generation_step(i, trace, layers=layers, heads=heads)
        # one event time for every step and neuron count: they all fall in one profiling window
        rec.update(model_version=self.model, entropy_bits=0.5, token_id=(i * 37 + 11) % 300, emitted_at_us=self.t0)
        rec.update(changes)
        self._send(STEP_BLOCKS, trace, as_block(rec), dead)  # one step a block: each poison is its own record

    def completion(self, trace: str, n: int, dead: str = "", **changes: Any) -> bytes:
        rec = {
            "trace_id": trace,
            "request_id": f"req-{trace}",
            "reply_to": "x",
            "tenant": "t",
            "model_version": self.model,
            "output_text": "ok",
            "token_count": n,
            "output_token_ids": [],
            "prompt_token_count": 3,
            "prompt_surprisal_bits": None,
            "prompt_embedding": [],
            "finish_reason": "STOP",
            "error": None,
            "timings": {"queue_us": 0, "prefill_us": 0, "decode_us": 0, "total_us": 0},
            "completed_at_us": self.t0,
        }
        rec.update(changes)
        value = COMPLETION.encode(rec)
        self._send(COMPLETIONS, trace, value, dead)
        return value

    def neurons(self, snapshot: str, layers: int, width: int, dead: str = "", **changes: Any) -> np.ndarray:
        counts = np.arange(layers * width, dtype="<i4").reshape(layers, width) % 5
        rec = {
            "snapshot_id": snapshot,
            "model_version": self.model,
            "steps": 10,
            "num_layers": layers,
            "ffn_width": width,
            "counts": counts.tobytes(),
            "window_start_us": self.t0,
            "window_end_us": self.t0,
        }
        rec.update(changes)
        self._send(NEURONS, self.model, NEURON.encode(rec), dead)
        return counts

    def _send(self, topic: str, key: str, value: bytes, dead: str) -> None:
        if dead:
            self.dead[value] = dead
        self.producer.send(topic, key, value)


def test_every_poison_record_is_dead_lettered_and_no_partition_or_agent_stops(kafka: str, worker: Worker) -> None:
    run = uuid.uuid4().hex[:8]
    model = f"poison-{run}@1"
    # event time 30 s ahead: the profiling window (2 s, closed 5 s past its end when idle) stays open until every
    # step and neuron count below has reached it, however slow the machine
    t0 = time.time_ns() // 1000 + 30_000_000
    tx = Traffic(kafka, model, t0)

    # risk, evo.step-blocks: one batch holds a good trace, a trace with a step of another shape, steps past limits
    good, shaped, nan = f"{run}-good", f"{run}-shape", f"{run}-nan"
    for i in range(3):
        tx.step(good, i)
    tx.step(shaped, 0)
    tx.step(shaped, 1, dead="has shape 6 layers", layers=6)
    tx.step(shaped, 1)  # the same partition goes on
    tx.step(shaped, 2, dead="measured: l2, heads", layer_hidden_maxabs=b"")  # the same shape, one matrix missing
    tx.step(shaped, 2)
    tx.step(f"{run}-huge", 0, dead="above the limits", **UNMEASURED, num_layers=100_000)
    tx.step(f"{run}-heads", 0, dead="65536 in all", **UNMEASURED, num_layers=512, num_heads=512)
    tx.step(f"{run}-short", 0, dead="4 values (or none) need 16", layer_hidden_l2=pack_f32([1.0, 2.0, 3.0]))
    tx.step(f"{run}-neg", -1, dead="negative step")
    tx.step(f"{run}-nonfinite", 0, dead="layer_nonfinite has 8 bytes", layer_nonfinite=[0, 0])
    tx.step(nan, 0)  # NaN and Inf are what risk looks for, not poison: folded, and flagged
    tx.step(nan, 1, layer_nonfinite=[0, 3, 3, 3], layer_hidden_l2=pack_f32([1.0, math.nan, math.inf, 1.0]))
    tx.step(nan, 2, entropy_bits=math.inf)
    tx.producer.flush()
    tx.finals.update({good: 3, shaped: 3, nan: 3})

    # risk, evo.completions: poison before the good completion of the same trace (same partition)
    tx.completion(good, 3, dead="NaN", prompt_embedding=[0.1, math.nan])
    tx.completion(good, 3, dead="negative token_count", token_count=-3)
    tx.completion(good, 3, dead="above the limit", prompt_embedding=[0.01] * 5000)
    first = tx.completion(good, 3)
    tx.producer.send(COMPLETIONS, good, first)  # the same completion again: a duplicate, no second FINAL
    tx.completion(shaped, 3)
    tx.completion(nan, 3)
    tx.producer.flush()
    read(kafka, RISK, "RiskReport", lambda got: sum(r["trace_id"] == good and r["stage"] == "FINAL" for r in got))
    tx.completion(good, 3, dead="a second, different completion", completed_at_us=t0 + 1)  # a conflicting FINAL

    # a whole trace of another shape under the same model: risk takes it (it is consistent), profiling refuses its
    # delta (the model's window sums 4 x 4 heads); it comes after the good steps' delta has opened that window
    odd = f"{run}-odd"
    for i in range(2):
        tx.step(odd, i, layers=2, heads=3)
    tx.completion(odd, 2)
    tx.finals[odd] = 2

    # drift: a reference of 20 embeddings of 8 values, then a window whose 21st completion has 12: refused by the
    # drift agent only (risk gives it its FINAL); the window still closes after 20 good ones
    rng = np.random.default_rng(1)
    for k in range(41):
        trace = f"{run}-drift-{k:02d}"
        dim = 12 if k == 25 else 8
        value = tx.completion(trace, 0, prompt_embedding=rng.normal(0, 1, dim).round(3).tolist(), output_token_ids=[])
        if k == 25:
            tx.dead[value] = "the drift windows of"
        tx.finals[trace] = 0

    # profiling, evo.neurons (keyed by model: one partition): poison between two good snapshots of one window
    a = tx.neurons(f"{run}-a", 3, 4)
    tx.neurons(f"{run}-size", 3, 4, dead="counts has 40 bytes", counts=np.zeros(10, "<i4").tobytes())
    tx.neurons(f"{run}-shape", 2, 6, dead="are 2 x 6, the open window")
    tx.neurons(f"{run}-over", 3, 4, dead="counts outside 0..10", counts=np.full(12, 99, "<i4").tobytes())
    tx.neurons(f"{run}-zero", 0, 0, dead="need 1..1024 layers", counts=b"")
    b = tx.neurons(f"{run}-b", 3, 4)
    tx.producer.flush()

    # every record accounted for: one FINAL per good trace, with its steps
    reports = read(
        kafka,
        RISK,
        "RiskReport",
        lambda got: {r["trace_id"] for r in got if r["stage"] == "FINAL"} >= set(tx.finals),
        timeout_s=120,
    )
    finals = Counter(
        (r["trace_id"], r["steps"]) for r in reports if r["stage"] == "FINAL" and r["model_version"] == model
    )
    assert finals == Counter(tx.finals.items())
    nan_alerts = [r for r in reports if r["trace_id"] == nan and r["stage"] == "EARLY"]
    assert nan_alerts and "nonfinite_hidden" in nan_alerts[0]["flags"]
    # drift: the window of 20 good completions after the reference was judged
    drifts = read(kafka, DRIFT, "DriftReport", lambda got: any(r["model_version"] == model for r in got))
    assert [r["sample_count"] for r in drifts if r["model_version"] == model] == [20]
    # profiling: the good traces' steps (not the odd trace's) and the two good neuron snapshots, nothing else
    deltas_topic = f"{worker.env['EVOSTREAM_PROCESSORS_APP_ID']}-profile-deltas"
    profiles = read(
        kafka,
        PROFILES,
        "ProfileSnapshot",
        lambda got: sum(p["step_count"] for p in got if p["model_version"] == model) >= 9,
        timeout_s=60,
    )
    mine = [p for p in profiles if p["model_version"] == model]
    assert sum(p["step_count"] for p in mine) == 9, mine
    counts = [np.asarray(p["ffn_neuron_activation_counts"]) for p in mine if p["ffn_neuron_activation_counts"]]
    assert len(counts) == 1 and (counts[0] == a + b).all()
    # every poison record dead-lettered once, with its reason; and the odd trace's delta, by profiling
    dead = read(
        kafka,
        DLQ,
        "DeadLetter",
        lambda got: (
            sum(d["raw_value"] in tx.dead for d in got) >= len(tx.dead)
            and any(d["source_topic"] == deltas_topic for d in got)
        ),
        timeout_s=60,
    )
    mine_dead = [d for d in dead if d["raw_value"] in tx.dead]
    assert Counter(d["raw_value"] for d in mine_dead) == Counter(tx.dead.keys())
    for d in mine_dead:
        assert tx.dead[d["raw_value"]] in d["error"], (d["error"], tx.dead[d["raw_value"]])
        assert d["consumer"] == worker.env["EVOSTREAM_PROCESSORS_APP_ID"]
    # the odd trace's partials: a delta of their own (a delta is cut where the shape changes), one per batch that
    # held its blocks, each dead-lettered with the reason; no other delta is
    odd_delta = [d for d in dead if d["source_topic"] == deltas_topic]
    assert odd_delta and all("profiling: steps with a (2, 3) head signal" in d["error"] for d in odd_delta)
    # and the worker is still up, no agent restarted
    assert worker.proc is not None and worker.proc.poll() is None
    log = worker.log.read_text()
    assert "Crashed" not in log and "Traceback" not in log, log[-3000:]


def test_a_record_with_a_key_near_the_size_limit_is_dead_lettered_by_its_kept_key(kafka: str, worker: Worker) -> None:
    """Old code: the dead letter was keyed by the whole ~950 KB key, on top of a value that keeps 64 KiB of it, so
    it was above the producer's 1,000,000-byte limit: the risk agent crashed on it, and the next step never folded."""
    run = uuid.uuid4().hex[:8]
    key = f"{run}-" + "k" * 950_000
    producer = EventProducer(kafka)
    producer.send(STEP_BLOCKS, key, b"junk")
    good = f"{run}-after"
    for i in range(2):  # on the poisoned partition, after it
        rec = generation_step(i, good)
        rec.update(entropy_bits=0.5, token_id=i + 11)
        producer.send(STEP_BLOCKS, key, as_block(rec))
    producer.flush()
    rec = {
        "trace_id": good,
        "request_id": f"req-{good}",
        "reply_to": "x",
        "tenant": "t",
        "model_version": "m@1",
        "output_text": "ok",
        "token_count": 2,
        "output_token_ids": [],
        "prompt_token_count": 3,
        "prompt_surprisal_bits": None,
        "prompt_embedding": [],
        "finish_reason": "STOP",
        "error": None,
        "timings": {"queue_us": 0, "prefill_us": 0, "decode_us": 0, "total_us": 0},
        "completed_at_us": 0,
    }
    producer.send(COMPLETIONS, good, COMPLETION.encode(rec))
    producer.flush()
    dead = read(
        kafka,
        DLQ,
        "DeadLetter",
        lambda got: any(d["raw_value"] == b"junk" and d["original_key"] == key.encode()[:KEEP_BYTES] for d in got),
    )
    mine = [d for d in dead if d["raw_value"] == b"junk" and d["original_key"] == key.encode()[:KEEP_BYTES]]
    assert len(mine) == 1 and mine[0]["raw_truncated"] and mine[0]["source_topic"] == STEP_BLOCKS
    reports = read(kafka, RISK, "RiskReport", lambda got: any(r["trace_id"] == good for r in got))
    assert [(r["stage"], r["steps"]) for r in reports if r["trace_id"] == good] == [("FINAL", 2)]
    assert worker.proc is not None and worker.proc.poll() is None
    assert "Crashed" not in worker.log.read_text()
