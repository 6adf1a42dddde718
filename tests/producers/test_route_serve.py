"""A routed inference service on the real broker: the embedded default model answers as "self", the same weights
loaded again answer as the governed reference. The test's policy sends prompts with digits to the reference before
generation, and its token gate moves any answer past 5 tokens (the model's long reversals, which it gets wrong) to the
reference mid-answer. On Kafka: a RouteDecision per decision with its stage, the self model's ESCALATED partial
answers, final answers from the reference's version, prices, offsets committed; the client gets the final answer."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from evostream.core.bus.security import client_config
from evostream.core.clock import now_us
from evostream.models.anatomy import anatomy
from evostream.models.loading import LoadedModel, load_model
from evostream.models.risk_probe import FeatureSums
from evostream.producers.client import InferenceClient
from evostream.producers.embedding import PromptEmbedder
from evostream.producers.generate import GenParams, InstrumentedGenerator
from evostream.producers.records import TokenTexts
from evostream.producers.routing import Route, Watches
from evostream.producers.service import GROUP, InferenceService, ServeOptions
from evostream.producers.steps import StepBatch, TraceMeta, step_records
from evostream.producers.targets import Answer, Emit, GovernedTarget
from evostream.routing.policy import (
    LevelGate,
    Router,
    RoutingError,
    TokenWatch,
)
from evostream.routing.prices import PriceTable
from evostream.schemas.catalog import COMPLETIONS, REQUESTS, ROUTES
from tests.producers.replies import read
from tests.producers.routes import MOVE_AFTER, length_probe, router

pytestmark = pytest.mark.integration

REFERENCE_VERSION = "evostream/t5-tiny-suite@reference-copy"
PRICES = {
    "evostream/t5-tiny-suite@reference-*": {"prompt_per_1k": 0.01, "output_per_1k": 0.03},
    "evostream/t5-tiny-suite@*": {"prompt_per_1k": 0.0001, "output_per_1k": 0.0002},
}
SHORT = ["upper: ab", "sort: cab", "upper: xyz"]
"""Answered by the self model: no digit, answers of at most 4 tokens."""
DIGITS = ["add: 12+34", "date: 2020-01-02"]
"""To the reference before generation: digits in the prompt."""
LONG = ["reverse: abcdefghijkl", "reverse: qwertyuiopas"]
"""Started by the self model, moved to the reference at its 6th token."""


class GatedTarget(GovernedTarget):
    """The governed reference, whose answers wait for the test while ``hold`` is set (to see the offset held)."""

    def __init__(self, loaded: LoadedModel) -> None:
        super().__init__(loaded)
        self.hold = threading.Event()
        self.entered = threading.Event()
        self.release = threading.Event()

    def answer(
        self, prompts: Any, params: GenParams, metas: Any, emit: Emit, deadline: float | None = None
    ) -> list[Answer]:
        if self.hold.is_set():
            self.entered.set()
            assert self.release.wait(120), "the test never released the reference"
        return super().answer(prompts, params, metas, emit, deadline)


@pytest.fixture(scope="module")
def routed(kafka: str) -> Iterator[tuple[InferenceService, GatedTarget, Router]]:
    self_model = load_model("default", device="cpu")
    reference = load_model("default", device="cpu")
    reference.version = REFERENCE_VERSION
    target = GatedTarget(reference)
    r = router(anatomy(self_model.model).num_layers)
    route = Route("default", lambda: r, target, PriceTable.from_json(PRICES))
    svc = InferenceService(kafka, self_model, PromptEmbedder(), ServeOptions(max_batch=8, max_wait_ms=50), route=route)
    ready = threading.Event()
    thread = threading.Thread(target=svc.run, kwargs={"on_ready": ready.set}, daemon=True)
    thread.start()
    assert ready.wait(60)
    yield svc, target, r
    target.release.set()
    svc.stop_event.set()
    thread.join(60)
    assert not thread.is_alive(), "the service did not stop"
    target.close()


def committed_everything(kafka: str, timeout_s: float = 30.0) -> bool:
    """Whether the serving group's committed offset reached the end of every partition of evo.requests."""
    probe = Consumer({"bootstrap.servers": kafka, "group.id": GROUP, "log_level": 3, **client_config(kafka)})
    try:
        meta = probe.list_topics(REQUESTS, timeout=10).topics[REQUESTS]
        parts = [TopicPartition(REQUESTS, p) for p in meta.partitions]
        deadline = time.monotonic() + timeout_s
        while True:
            ends = [probe.get_watermark_offsets(tp, timeout=10)[1] for tp in parts]
            got = [tp.offset for tp in probe.committed(parts, timeout=10)]
            if all(e == 0 or g == e for g, e in zip(got, ends, strict=True)):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
    finally:
        probe.close()


def test_requests_are_routed_before_and_during_generation_and_every_decision_is_on_kafka(
    kafka: str, routed: tuple[InferenceService, GatedTarget, Router]
) -> None:
    svc, _, r = routed
    since = now_us()
    prompts = SHORT + DIGITS + LONG
    with InferenceClient(kafka) as client:
        replies = client.infer_many(prompts, timeout_s=120, max_new_tokens=32)
    by_prompt = dict(zip(prompts, replies, strict=True))
    self_version = svc.serving.version

    # the client got each request's final answer
    for p in SHORT:
        assert by_prompt[p]["model_version"] == self_version
        assert by_prompt[p]["finish_reason"] == "STOP"
    assert by_prompt["upper: ab"]["output_text"] == "AB"
    for p in DIGITS + LONG:
        assert by_prompt[p]["model_version"] == REFERENCE_VERSION
        assert by_prompt[p]["finish_reason"] in ("STOP", "LENGTH")
    assert by_prompt["add: 12+34"]["output_text"] == "46"
    for rec in replies:
        assert rec["error"] is None and len(rec["prompt_embedding"]) == 384
        reference = rec["model_version"] == REFERENCE_VERSION
        price = PRICES["evostream/t5-tiny-suite@reference-*" if reference else "evostream/t5-tiny-suite@*"]
        want = (rec["prompt_token_count"] * price["prompt_per_1k"] + rec["token_count"] * price["output_per_1k"]) / 1e3
        assert rec["cost_usd"] == pytest.approx(want) and want > 0

    ids = {rec["request_id"] for rec in replies}
    rid = {p: by_prompt[p]["request_id"] for p in prompts}

    # every Completion on Kafka: one each, plus the self model's partial answer of each long one
    completions = read(kafka, COMPLETIONS, "Completion", ids, since, len(prompts) + len(LONG))
    per: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for rec in completions:
        per[rec["request_id"]].append(rec)
    for p in SHORT + DIGITS:
        assert [c["finish_reason"] for c in per[rid[p]]] == [by_prompt[p]["finish_reason"]]
    for p in LONG:
        partial = [c for c in per[rid[p]] if c["finish_reason"] == "ESCALATED"]
        final = [c for c in per[rid[p]] if c["finish_reason"] != "ESCALATED"]
        assert len(partial) == 1 and len(final) == 1, per[rid[p]]
        assert partial[0]["model_version"] == self_version
        assert partial[0]["token_count"] == MOVE_AFTER + 1  # stopped at the step the watch moved
        assert partial[0]["trace_id"] != final[0]["trace_id"]
        assert final[0]["trace_id"] == by_prompt[p]["trace_id"]

    # every decision on evo.routes, with its stage
    decisions = read(kafka, ROUTES, "RouteDecision", ids, since, len(prompts) + len(LONG))
    by_request: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for d in decisions:
        by_request[d["request_id"]].append(d)
        assert d["route"] == "default" and d["level"] == 3 and d["policy_version"] == r.policy_version
        assert [c["model_version"] for c in d["candidates"]] == [self_version, REFERENCE_VERSION]
    for p in SHORT:
        (d,) = by_request[rid[p]]
        assert (d["stage"], d["chosen"], d["chosen_version"]) == ("PROMPT", "self", self_version)
        assert d["risk"] < 0.5 and d["gate"] == 0.5
        assert d["trace_id"] == by_prompt[p]["trace_id"]
    for p in DIGITS:
        (d,) = by_request[rid[p]]
        assert (d["stage"], d["chosen"], d["chosen_version"]) == ("PROMPT", "reference", REFERENCE_VERSION)
        assert d["risk"] > 0.5 and "prompt risk" in d["reason"]
        assert d["trace_id"] == by_prompt[p]["trace_id"]
    for p in LONG:
        before, during = sorted(by_request[rid[p]], key=lambda d: d["decided_at_us"])
        assert (before["stage"], before["chosen"]) == ("PROMPT", "self")
        assert (during["stage"], during["chosen"], during["step"]) == ("GENERATION", "reference", MOVE_AFTER)
        assert during["risk"] > during["gate"] == 0.5 and "token risk" in during["reason"]
        partial = next(c for c in per[rid[p]] if c["finish_reason"] == "ESCALATED")
        assert before["trace_id"] == during["trace_id"] == partial["trace_id"]

    # the steps of both models are on evo.steps: the partial answer's and the reference's, each under its version
    with InferenceClient(kafka) as client:
        traces = {c["trace_id"]: c for c in completions}
        steps = client.trace_steps(set(traces), sum(c["token_count"] for c in completions), timeout_s=60)
    for s in steps:
        assert s["model_version"] == traces[s["trace_id"]]["model_version"]
    assert len(steps) == sum(c["token_count"] for c in completions)

    # and every request's offset is committed
    assert committed_everything(kafka)


def test_an_escalated_request_is_not_committed_before_its_final_answer(
    kafka: str, routed: tuple[InferenceService, GatedTarget, Router]
) -> None:
    """The partial answer is on Kafka, the reference holds its answer: the group's offset must not pass the
    request until the final Completion is acknowledged."""
    _, target, _ = routed
    assert committed_everything(kafka)  # nothing left over from before
    target.hold.set()
    try:
        with InferenceClient(kafka) as client:
            reply = client.submit("reverse: zyxwvutsrqpo", max_new_tokens=32)
            assert target.entered.wait(120), "the request never reached the reference"
            assert not committed_everything(kafka, timeout_s=1.5)
            target.release.set()
            final = reply.result(120)
    finally:
        target.hold.clear()
        target.release.set()
    assert final["model_version"] == REFERENCE_VERSION and final["finish_reason"] != "ESCALATED"
    assert committed_everything(kafka)


def test_a_routed_service_refuses_continuous_batching(kafka: str) -> None:
    loaded = load_model("default", device="cpu")
    route = Route("default", lambda: router(3), GovernedTarget(loaded), PriceTable())
    with pytest.raises(RoutingError, match="--batching static"):
        InferenceService(
            kafka, loaded, None, ServeOptions(max_batch=4, max_wait_ms=5, batching="continuous"), route=route
        )


def test_a_watch_sees_exactly_the_step_records_the_emitter_publishes() -> None:
    """``Watches`` builds the records of the watched rows only: each watch folds exactly what the emitter publishes
    for its row (here a gate of 1 never moves, so every step is seen)."""
    loaded = load_model("default", device="cpu")
    gen = InstrumentedGenerator(loaded)
    texts = TokenTexts(loaded.tokenizer)
    probe = length_probe(gen.num_layers)
    never = LevelGate(3, 0.8, prompt_gate=0.5, token_gate=1.0)
    metas = [TraceMeta(f"t{i}", f"r{i}", f"r{i}", "default", 0) for i in range(3)]
    watched = [TokenWatch(probe, never), None, TokenWatch(probe, never)]
    watches = Watches(watched, metas, loaded.version, gen.signal)
    published: list[dict[str, Any]] = []

    def on_step(sb: StepBatch) -> list[int]:
        t = texts.rows(sb)
        published.extend(step_records(sb, metas, loaded.version, gen.signal, t))
        return watches.on_step(sb, t)

    try:
        gen.generate(["upper: ab", "sort: cab", "reverse: abcdef"], GenParams(max_new_tokens=8), on_step)
    finally:
        gen.close()
    assert not watches.moved
    for row in (0, 2):
        watch = watched[row]
        assert watch is not None
        mine = [rec for rec in published if rec["trace_id"] == f"t{row}"]
        assert watch.sums.n == len(mine) > 0
        assert watch.sums.to_state() == _folded(mine, gen.num_layers)


def _folded(records: list[dict[str, Any]], num_layers: int) -> dict[str, Any]:
    sums = FeatureSums(num_layers)
    for rec in records:
        sums.update(rec)
    return sums.to_state()
