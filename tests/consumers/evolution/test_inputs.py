"""What evolution reads from the log holds at most ``max_pairs`` answers at a time (not every prompt of the topic's
7 days), gives the same pairs as joining everything and keeping the tail, and skips NeuronCounts snapshots that do
not fit their own shape, saying why."""

from __future__ import annotations

import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from evostream.consumers.evolution.inputs import (
    HandedOver,
    LabelOnly,
    counts_problem,
    last_answers,
    prompts_of,
    read_observed,
)
from evostream.core.bus.admin import ensure_topics
from evostream.core.bus.producer import EventProducer
from evostream.core.stack import LocalStack
from evostream.schemas.catalog import CATALOG, COMPLETIONS, NEURONS, REQUESTS, ROUTES
from evostream.schemas.codec import RecordCodec
from evostream.schemas.samples import completion, route_decision
from tests.conftest import stack_settings


def completions(n: int, text_bytes: int = 8) -> Iterator[dict[str, Any]]:
    """``n`` completions: every 7th of another version, every 5th an error, ids of request ``i``."""
    for i in range(n):
        rec: dict[str, Any] = dict(completion(i))
        rec["model_version"] = "other" if i % 7 == 0 else "v1"
        rec["error"] = "model error" if i % 5 == 0 else None
        rec["role"] = "ANSWER"  # shadow answers: test_a_shadow_answer_is_neither_...
        rec["output_text"] = f"{i:08d}" + "a" * text_bytes
        rec["output_token_ids"] = [i, i + 1]
        yield rec


def requests(n: int, first: int = 0) -> Iterator[dict[str, Any]]:
    for i in range(first, n):
        yield {"request_id": f"req-{i}", "prompt": f"prompt {i}"}


def joined_then_cut(n_req_first: int, n: int, max_pairs: int) -> list[tuple[str, str, list[int]]]:
    """The join as it was written before: every request's prompt held, every answer held, the tail kept."""
    prompts = {r["request_id"]: r["prompt"] for r in requests(n, n_req_first)}
    answered = [
        (prompts[c["request_id"]], c["output_text"], list(c["output_token_ids"]))
        for c in completions(n)
        if c["model_version"] == "v1" and c["error"] is None and c["request_id"] in prompts
    ]
    return answered[-max_pairs:]


@pytest.mark.parametrize("expired", [0, 1000, 2950, 3000])
def test_the_ring_gives_the_tail_of_the_whole_join(expired: int) -> None:
    """Requests expire before their completions (oldest first): with none, some, most or all of them gone."""
    ring = last_answers(completions(3000), "v1", 100)
    prompts = prompts_of(requests(3000, expired), {rid for rid, _, _ in ring})
    got = [(prompts[rid], out, ids) for rid, out, ids in ring if rid in prompts]
    assert got == joined_then_cut(expired, 3000, 100)
    assert len(got) == min(100, len(joined_then_cut(expired, 3000, 10**6)))


def test_the_ring_never_holds_more_than_max_pairs_answers() -> None:
    """50,000 answers of 2 KB each would be 100 MB if held; the ring keeps 50 of them."""
    tracemalloc.start()
    try:
        ring = last_answers(completions(50_000, text_bytes=2000), "v1", 50)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(ring) == 50 and ring[-1][0] == "req-49999"
    assert peak < 2_000_000, f"peak {peak:,} bytes"


def neurons(snapshot: str, layers: int, width: int, size: int, steps: int = 3) -> dict[str, Any]:
    return {
        "snapshot_id": snapshot,
        "model_version": "v1",
        "steps": steps,
        "num_layers": layers,
        "ffn_width": width,
        "counts": np.ones(size, dtype="<i4").tobytes(),
        "window_start_us": 1,
        "window_end_us": 2,
    }


def test_counts_that_do_not_fit_their_shape_are_named() -> None:
    assert counts_problem(neurons("a", 2, 4, 8)) is None
    assert counts_problem(neurons("b", 2, 4, 7)) == "28 bytes of counts, not 2 layers x 4 neurons of 4 bytes"
    assert counts_problem(neurons("c", 0, 4, 0)) == "num_layers 0, ffn_width 4 and steps 3 must be positive"
    assert counts_problem(neurons("d", 2, 4, 8, steps=-1)) == "num_layers 2, ffn_width 4 and steps -1 must be positive"


@pytest.fixture(scope="module")
def private_kafka(tmp_path_factory: pytest.TempPathFactory, kafka: str) -> Iterator[str]:
    """A broker of this module's own: its evo.requests holds large prompts that no inference test should serve.
    (``kafka`` marks the module as an integration test and keeps it out of the unit runs.)"""
    stack = LocalStack(stack_settings(Path(tmp_path_factory.mktemp("kafka-inputs"))))
    bootstrap = stack.up().bootstrap
    try:
        ensure_topics(bootstrap, CATALOG)
        yield bootstrap
    finally:
        stack.down()


def test_read_observed_holds_only_the_answers_it_keeps_and_skips_bad_counts(private_kafka: str) -> None:
    n, prompt_bytes, keep = 600, 32 * 1024, 5
    producer = EventProducer(private_kafka)
    req_codec, comp_codec = RecordCodec("InferenceRequest"), RecordCodec("Completion")
    for i in range(n):
        req = {
            "request_id": f"req-{i}",
            "prompt": f"{i:06d}" + "p" * prompt_bytes,
            "params": {"max_new_tokens": 4, "do_sample": False, "temperature": 1.0, "top_k": 0, "top_p": 1.0},
            "tenant": "t",
            "reply_to": f"req-{i}",
            "submitted_at_us": 1,
        }
        producer.send(REQUESTS, req["request_id"], req_codec.encode(req | {"params": req["params"] | {"seed": None}}))
        comp = dict(completion(i)) | {"model_version": "v1", "error": None, "output_text": f"answer {i}"}
        producer.send(COMPLETIONS, comp["trace_id"], comp_codec.encode(comp))
    counts = RecordCodec("NeuronCounts")
    for rec in (neurons("good-1", 2, 4, 8), neurons("short", 2, 4, 7), neurons("good-2", 2, 4, 8, steps=5)):
        producer.send(NEURONS, "v1", counts.encode(rec))
    producer.flush(60)

    said: list[str] = []
    tracemalloc.start()
    try:
        seen = read_observed(private_kafka, "v1", max_pairs=keep, idle_s=1.0, progress=said.append)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # 600 prompts of 32 KB are 19 MB: holding them all before keeping 5 is what this test refuses (a fetched
    # batch of requests is held whole, two while the next is fetched: 4 MB)
    assert peak < 8_000_000, f"peak {peak:,} bytes"
    # the last 5 as read (three partitions interleave), each with its own request's prompt
    assert len(seen.pairs) == keep
    assert all(out == f"answer {int(p[:6])}" for p, out in seen.pairs), [(p[:6], out) for p, out in seen.pairs]
    assert seen.neuron_counts is not None and seen.neuron_counts.tolist() == [[2] * 4] * 2
    assert seen.neuron_steps == 8
    assert seen.skipped == ["NeuronCounts short: 28 bytes of counts, not 2 layers x 4 neurons of 4 bytes"]
    assert "log: skipped NeuronCounts short: 28 bytes of counts, not 2 layers x 4 neurons of 4 bytes" in said


def routed(version: str, ref: str, run: str) -> list[dict[str, Any]]:
    """Completions of a routed history: request a answered by ``version``; b begun by it and handed over mid-answer
    (its partial, then the reference's answer, read first); c handed over but the reference failed; d answered by
    the reference from the start."""

    def done(rid: str, v: str, text: str, finish: str = "STOP", error: str | None = None) -> dict[str, Any]:
        return dict(completion(0)) | {
            "trace_id": f"{run}-{rid}-{v}",
            "request_id": f"{run}-{rid}",
            "model_version": v,
            "output_text": text,
            "finish_reason": finish,
            "error": error,
            "cached": False,
        }

    return [
        done("a", version, "self answer a"),
        done("b", ref, "reference answer b"),
        done("b", version, "half an ans", "ESCALATED"),
        done("c", version, "half", "ESCALATED"),
        done("c", ref, "", "ERROR", "the reference timed out"),
        done("d", ref, "reference answer d"),
    ]


def test_a_partial_is_no_answer_and_the_reference_answer_it_handed_over_to_is_a_target() -> None:
    recs = routed("v1", "big", "r")
    assert [rid for rid, _, _ in last_answers(recs, "v1", 10)] == ["r-a"]  # the partials are not answers
    escalated = HandedOver("v1", 10)
    for rec in recs:
        escalated.add(rec)
    assert escalated.answers() == [("r-b", "reference answer b")]  # c: the reference failed; d: never v1's
    few = HandedOver("v1", 10, held=1)  # the answer read before its partial fell out of the bound
    for rec in [*recs[1:2], *routed("v1", "big", "s")[-1:], *recs[2:3]]:
        few.add(rec)
    assert few.answers() == []


def test_a_shadow_answer_is_neither_the_versions_traffic_nor_the_answer_a_request_was_handed_over_to() -> None:
    recs = routed("v1", "big", "sh")
    # a rollout mirrored a: the candidate "big" answered it in the shadow; and v1 shadowed request e
    shadow_a = recs[0] | {"trace_id": "sh-a-shadow", "model_version": "big", "role": "SHADOW", "output_text": "no"}
    shadow_e = recs[0] | {"trace_id": "sh-e-shadow", "request_id": "sh-e", "role": "SHADOW"}
    assert [rid for rid, _, _ in last_answers([*recs, shadow_a, shadow_e], "v1", 10)] == ["sh-a"]
    handed = HandedOver("v1", 10)
    for rec in [recs[3], shadow_a | {"request_id": "sh-c"}, *recs]:  # c's shadow answer came before its failure
        handed.add(rec)
    assert handed.answers() == [("sh-b", "reference answer b")]


def before_generation(version: str, ref: str, rid: str, chosen: str = "reference", stage: str = "PROMPT") -> Any:
    """The RouteDecision that sent ``rid`` to ``chosen`` at ``stage``, weighing ``version`` as the self model."""
    weighed = [
        {"target": "self", "model_version": version, "score": 0.9, "cost_usd": 0.0},
        {"target": "reference", "model_version": ref, "score": 0.0, "cost_usd": 0.0},
    ]
    chosen_version = ref if chosen == "reference" else version
    over = {"request_id": rid, "stage": stage, "chosen": chosen, "chosen_version": chosen_version, "step": None}
    return {**route_decision(0), **over, "candidates": weighed}


def test_a_request_sent_to_the_reference_before_generation_is_handed_over_too() -> None:
    recs = routed("v1", "big", "r")
    handed = HandedOver("v1", 10)
    handed.decided(before_generation("v1", "big", "r-d"))
    handed.decided(before_generation("v2", "big", "r-a"))  # another self model's route
    handed.decided(before_generation("v1", "big", "r-a", chosen="self"))  # kept on v1
    for rec in recs:
        handed.add(rec)
    assert handed.answers() == [("r-d", "reference answer d"), ("r-b", "reference answer b")]


def test_read_observed_gives_the_reference_answers_to_escalated_requests(kafka: str) -> None:
    run = uuid.uuid4().hex[:8]
    version = f"v-{run}"
    producer = EventProducer(kafka)
    req_codec, comp_codec = RecordCodec("InferenceRequest"), RecordCodec("Completion")
    params = {"max_new_tokens": 4, "do_sample": False, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": None}
    for rid in "abcd":
        req = {
            "request_id": f"{run}-{rid}",
            "prompt": f"prompt {rid}",
            "params": params,
            "tenant": "t",
            "reply_to": "x",
            "submitted_at_us": 1,
        }
        producer.send(REQUESTS, req["request_id"], req_codec.encode(req))
    ref = f"external:big-{run}"
    for rec in routed(version, ref, run):
        producer.send(COMPLETIONS, rec["trace_id"], comp_codec.encode(rec))
    decision = RecordCodec("RouteDecision")
    producer.send(ROUTES, f"{run}-d", decision.encode(before_generation(version, ref, f"{run}-d")))
    producer.flush(60)
    said: list[str] = []
    seen = read_observed(kafka, version, idle_s=1.0, progress=said.append)
    assert seen.pairs == [("prompt a", "self answer a")]
    # d went to the reference before generation (read first, from evo.routes), b mid-answer
    assert seen.reference_pairs == [("prompt d", "reference answer d"), ("prompt b", "reference answer b")]
    assert all(isinstance(p, LabelOnly) for p in seen.reference_pairs)  # learnt from the label alone
    assert seen.targets == [
        ("prompt a", "self answer a"),
        ("prompt d", "reference answer d"),
        ("prompt b", "reference answer b"),
    ]
    assert "2 reference answers to requests handed over from it" in said[-1], said
