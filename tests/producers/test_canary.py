"""Canary and shadow in the inference service, on the real broker, with real model versions: the embedded default
model in production; as candidates, the same weights loaded again under another version (its answers agree), a copy
with its weights perturbed (its answers differ), and copies with a fault injected into their decoding (one that fails,
one that waits for the test). The deployment is set by the test (``DeploymentSlot``), as the governance follower
sets it in ``serve --governed``."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from confluent_kafka import Consumer, TopicPartition

from evostream.core.bus.security import client_config
from evostream.core.clock import now_us
from evostream.models.loading import LoadedModel, load_model
from evostream.producers.client import InferenceClient
from evostream.producers.deployment import Deployment, DeploymentSlot
from evostream.producers.embedding import PromptEmbedder
from evostream.producers.service import GROUP, InferenceService, ServeOptions
from evostream.producers.swap import ServingModel
from evostream.rollout.split import assign
from evostream.schemas.catalog import REQUESTS, SHADOW, STEPS
from tests.producers.replies import collect, read

pytestmark = pytest.mark.integration

PROMPTS = ["upper: ab", "sort: cab", "reverse: abcdef", "add: 12+34", "upper: xyz", "copy: hello", "sort: zyx"]
TOKENS = 16


def loaded(version: str, change: Callable[[LoadedModel], None] = lambda _: None) -> ServingModel:
    """The embedded default model loaded anew (a model object of its own), changed by ``change``, as ``version``."""
    lm = load_model("default", device="cpu")
    change(lm)
    lm.version = version
    return ServingModel(version, lm)


def perturbed(lm: LoadedModel) -> None:
    """Weight noise that breaks most answers (as bench.variants' faulted candidate), embeddings untouched."""
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in lm.model.named_parameters():
            if p.dim() == 2 and "shared" not in name:
                p.add_(torch.randn(p.shape, generator=gen) * 0.7 * p.std())


class Fault:
    """A fault injected into a model's decoding step: it raises while ``broken`` is set, and waits while ``hold``
    is (``entered`` says a step is waiting)."""

    def __init__(self, lm: LoadedModel) -> None:
        self.broken = threading.Event()
        self.hold = threading.Event()
        self.entered = threading.Event()
        self.release = threading.Event()
        forward = lm.model.forward

        def faulty(*args: Any, **kwargs: Any) -> Any:
            if self.broken.is_set():
                raise RuntimeError("injected fault: the candidate's decoder failed")
            if self.hold.is_set():
                self.entered.set()
                assert self.release.wait(120), "the test never released the candidate"
            return forward(*args, **kwargs)

        lm.model.forward = faulty  # type: ignore[method-assign]


class GatedEmbedder(PromptEmbedder):
    """The prompt embedder, whose call for a shadow answer (no prompt of its own: it reuses production's vector)
    waits while ``hold`` is set: the SHADOW Completion is then not sent yet."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = threading.Event()
        self.entered = threading.Event()
        self.release = threading.Event()

    def embed(self, texts: Any) -> list[list[float]]:
        if not texts and self.hold.is_set():
            self.entered.set()
            assert self.release.wait(120), "the test never released the embedder"
        return super().embed(texts)


@dataclass
class Stage:
    svc: InferenceService
    slot: DeploymentSlot
    prod: ServingModel
    same: ServingModel
    other: ServingModel
    faulty: ServingModel
    fault: Fault
    embedder: GatedEmbedder


@pytest.fixture(scope="module")
def stage(kafka: str) -> Iterator[Stage]:
    prod = loaded("evostream/t5-tiny-suite@prod")
    faulty = loaded("evostream/t5-tiny-suite@faulty")
    st = Stage(
        svc=None,  # type: ignore[arg-type]
        slot=DeploymentSlot(Deployment(prod)),
        prod=prod,
        same=loaded("evostream/t5-tiny-suite@same"),
        other=loaded("evostream/t5-tiny-suite@perturbed", perturbed),
        faulty=faulty,
        fault=Fault(faulty.loaded),
        embedder=GatedEmbedder(),
    )
    options = ServeOptions(max_batch=8, max_wait_ms=30)
    st.svc = InferenceService(kafka, prod.loaded, st.embedder, options, deployments=st.slot)
    ready = threading.Event()
    thread = threading.Thread(target=st.svc.run, kwargs={"on_ready": ready.set}, daemon=True)
    thread.start()
    assert ready.wait(60)
    yield st
    st.fault.release.set()
    st.embedder.release.set()
    st.svc.stop_event.set()
    thread.join(60)
    assert not thread.is_alive(), "the service did not stop"


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


def by_request(recs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for rec in recs:
        out[rec["request_id"]].append(rec)
    return out


def ask(kafka: str, prompts: list[str], ids: list[str] | None = None) -> list[dict[str, Any]]:
    """The replies the client gets, in order."""
    with InferenceClient(kafka) as client:
        replies = [
            client.submit(p, max_new_tokens=TOKENS, request_id=None if ids is None else ids[i])
            for i, p in enumerate(prompts)
        ]
        return [r.result(120) for r in replies]


def test_a_mirrored_request_gets_a_shadow_answer_and_a_comparison_and_the_client_only_production(
    kafka: str, stage: Stage
) -> None:
    stage.slot.set(Deployment(stage.prod, stage.same, weight=0, shadow_share=1.0, rollout_id="r-shadow"))
    since = now_us()
    served = stage.svc.served
    replies = ask(kafka, PROMPTS)
    assert [(r["role"], r["model_version"], r["rollout_id"]) for r in replies] == [
        ("ANSWER", stage.prod.version, None)
    ] * len(PROMPTS)
    ids = {r["request_id"] for r in replies}
    completions = by_request(collect(kafka, ids, since))
    comparisons = {c["request_id"]: c for c in read(kafka, SHADOW, "ShadowComparison", ids, since, len(ids))}
    shadow_traces: dict[str, dict[str, Any]] = {}
    for reply in replies:
        answer, shadow = sorted(completions[reply["request_id"]], key=lambda c: c["role"])
        assert (answer["trace_id"], answer["role"]) == (reply["trace_id"], "ANSWER")
        assert (shadow["role"], shadow["model_version"], shadow["rollout_id"]) == (
            "SHADOW",
            stage.same.version,
            "r-shadow",
        )
        assert shadow["trace_id"] != answer["trace_id"] and shadow["reply_to"] == answer["reply_to"]
        assert shadow["error"] is None and shadow["output_text"] == answer["output_text"]  # the same weights
        assert len(shadow["prompt_embedding"]) == 384 and shadow["prompt_embedding"] == answer["prompt_embedding"]
        cmp = comparisons[reply["request_id"]]
        assert cmp["agree"] is True and cmp["rollout_id"] == "r-shadow"
        assert (cmp["production_trace_id"], cmp["candidate_trace_id"]) == (answer["trace_id"], shadow["trace_id"])
        assert (cmp["production_version"], cmp["candidate_version"]) == (stage.prod.version, stage.same.version)
        assert (cmp["production_tokens"], cmp["candidate_tokens"]) == (answer["token_count"], shadow["token_count"])
        t = answer["timings"]
        assert cmp["production_us"] == t["prefill_us"] + t["decode_us"] > 0 and cmp["candidate_us"] > 0
        assert cmp["production_error"] is None and cmp["candidate_error"] is None
        shadow_traces[shadow["trace_id"]] = shadow
    assert stage.svc.served - served == len(PROMPTS)  # a shadow answer answers no request
    # the shadow's steps are on evo.steps under its own trace and the candidate's version: the processors score it
    want = sum(c["token_count"] for cs in completions.values() for c in cs)
    steps = read(kafka, STEPS, "GenerationStep", ids, since, want)
    for trace, shadow in shadow_traces.items():
        mine = [s for s in steps if s["trace_id"] == trace]
        assert len(mine) == shadow["token_count"] and {s["model_version"] for s in mine} == {stage.same.version}
    assert committed_everything(kafka)

    # a candidate that answers differently: the comparisons say so
    stage.slot.set(Deployment(stage.prod, stage.other, weight=0, shadow_share=1.0, rollout_id="r-other"))
    since = now_us()
    ids = {r["request_id"] for r in ask(kafka, PROMPTS)}
    comparisons = {c["request_id"]: c for c in read(kafka, SHADOW, "ShadowComparison", ids, since, len(ids))}
    assert {c["candidate_version"] for c in comparisons.values()} == {stage.other.version}
    assert not all(c["agree"] for c in comparisons.values()), "the perturbed weights answered every prompt alike"


def test_a_canary_answers_the_requests_the_split_gives_it_and_a_new_weight_applies_at_the_next_batch(
    kafka: str, stage: Stage
) -> None:
    stage.slot.set(Deployment(stage.prod, stage.other, weight=50, rollout_id="r-canary"))
    ids = [f"canary-{now_us()}-{i}" for i in range(2 * len(PROMPTS))]
    arms = {rid: assign(rid, "r-canary", 50, 0.0) for rid in ids}
    assert set(arms.values()) == {"CANDIDATE", "INCUMBENT"}, "pick ids with both arms"
    replies = ask(kafka, PROMPTS * 2, ids)
    for reply in replies:
        to_candidate = arms[reply["request_id"]] == "CANDIDATE"
        assert reply["role"] == "ANSWER" and reply["error"] is None
        assert reply["model_version"] == (stage.other.version if to_candidate else stage.prod.version)
        assert reply["rollout_id"] == ("r-canary" if to_candidate else None)
    assert stage.svc.candidate is not None and stage.svc.candidate.version == stage.other.version

    stage.slot.set(Deployment(stage.prod, stage.other, weight=100, rollout_id="r-canary"))
    assert {r["model_version"] for r in ask(kafka, PROMPTS)} == {stage.other.version}
    # the rollout aborted: everything back to production at the next batch, no model loaded, the candidate closed
    swaps = stage.svc.swaps
    stage.slot.set(Deployment(stage.prod))
    assert {(r["model_version"], r["rollout_id"]) for r in ask(kafka, PROMPTS)} == {(stage.prod.version, None)}
    assert stage.svc.candidate is None and stage.svc.swaps == swaps
    assert committed_everything(kafka)


def test_a_candidate_that_fails_answers_its_rows_with_errors_and_production_goes_on(kafka: str, stage: Stage) -> None:
    stage.fault.broken.set()
    try:
        stage.slot.set(Deployment(stage.prod, stage.faulty, weight=50, shadow_share=1.0, rollout_id="r-broken"))
        ids = [f"broken-{now_us()}-{i}" for i in range(2 * len(PROMPTS))]
        arms = {rid: assign(rid, "r-broken", 50, 1.0) for rid in ids}
        assert set(arms.values()) == {"CANDIDATE", "MIRRORED"}
        since = now_us()
        replies = ask(kafka, PROMPTS * 2, ids)
    finally:
        stage.fault.broken.clear()
    for reply in replies:
        if arms[reply["request_id"]] == "CANDIDATE":  # the gates count these
            assert (reply["model_version"], reply["finish_reason"]) == (stage.faulty.version, "ERROR")
            assert "injected fault" in reply["error"] and reply["rollout_id"] == "r-broken"
        else:
            assert (reply["model_version"], reply["error"]) == (stage.prod.version, None)
    mirrored = {rid for rid, a in arms.items() if a == "MIRRORED"}
    comparisons = read(kafka, SHADOW, "ShadowComparison", mirrored, since, len(mirrored))
    assert all(not c["agree"] and "injected fault" in c["candidate_error"] for c in comparisons)
    shadows = [c for c in collect(kafka, mirrored, since) if c["role"] == "SHADOW"]
    assert len(shadows) == len(mirrored) and all(s["finish_reason"] == "ERROR" for s in shadows)
    # the service is still serving
    assert all(r["error"] is None for r in ask(kafka, PROMPTS[:2], [f"after-{now_us()}-{i}" for i in range(2)]))
    stage.slot.set(Deployment(stage.prod))
    assert committed_everything(kafka)


def test_a_mirrored_request_is_not_committed_before_its_shadow_records(kafka: str, stage: Stage) -> None:
    """Production's answer is acknowledged (the client has it) and the candidate's shadow answer is generated, but
    its SHADOW Completion is not sent yet (its completer call waits): the group's offset must not pass the request
    until the SHADOW Completion and the comparison are acknowledged too."""
    stage.slot.set(Deployment(stage.prod, stage.faulty, weight=0, shadow_share=1.0, rollout_id="r-held"))
    assert committed_everything(kafka)
    for gate in (stage.fault, stage.embedder):
        gate.entered.clear()
        gate.release.clear()
        gate.hold.set()
    try:
        with InferenceClient(kafka) as client:
            answer = client.submit("upper: abc", max_new_tokens=TOKENS).result(120)  # production's, shadow held
            assert answer["model_version"] == stage.prod.version
            assert stage.fault.entered.wait(120), "the mirror never reached the candidate"
            stage.fault.release.set()  # the shadow answer is generated; its Completion waits in the completer
            assert stage.embedder.entered.wait(120), "the shadow answer never reached the completer"
            assert not committed_everything(kafka, timeout_s=2.0)
            stage.embedder.release.set()
    finally:
        for gate in (stage.fault, stage.embedder):
            gate.hold.clear()
            gate.release.set()
        stage.slot.set(Deployment(stage.prod))
    assert committed_everything(kafka)
