"""Hot-swap of the serving model on the real broker: nothing in flight fails or is lost, and every record names the
version that produced it. The models are tiny T5s built from config, stored in a real artifact store."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from evostream.core.artifacts import ArtifactStore
from evostream.core.clock import now_us
from evostream.models.loading import LoadedModel, load_model
from evostream.producers.client import InferenceClient
from evostream.producers.generate import GenerationError, GenParams, InstrumentedGenerator
from evostream.producers.service import InferenceService, ServeOptions
from evostream.producers.swap import ModelSlot, ServingModel, artifact_loader, check_servable
from tests.producers.models import tiny
from tests.producers.replies import collect

PROMPTS = ["reverse: hello", "sort: cab", "add: 1+2", "copy: xyz", "lookup: k", "count: aaa"]


@dataclass(frozen=True)
class Stored:
    store: ArtifactStore
    a: str  # artifact digests
    b: str
    c: str

    @staticmethod
    def version(sha256: str) -> str:
        return f"tiny-t5@{sha256[:12]}"


def load_cpu(path: Path) -> LoadedModel:
    return load_model(str(path), device="cpu")


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Stored:
    """Three different tiny T5s (greedy decoding tells them apart), saved and put into an artifact store."""
    root = tmp_path_factory.mktemp("swap")
    store = ArtifactStore(root / "store")
    digests = []
    for seed in (0, 1, 2):
        lm = tiny("t5", varied=True, seed=seed)
        lm.model.save_pretrained(root / f"m{seed}")
        lm.tokenizer.save_pretrained(root / f"m{seed}")
        digests.append(store.put_dir(root / f"m{seed}").sha256)
    return Stored(store, *digests)


@pytest.fixture(scope="module")
def served(kafka: str, stored: Stored) -> Iterator[tuple[InferenceService, ModelSlot]]:
    slot = ModelSlot(ServingModel(stored.version(stored.a), artifact_loader(stored.store, stored.a, load_cpu)()))
    options = ServeOptions(max_batch=4, max_wait_ms=20, max_prompt_tokens=64)
    svc = InferenceService(kafka, slot.current().loaded, None, options, models=slot)
    ready = threading.Event()
    thread = threading.Thread(target=svc.run, kwargs={"on_ready": ready.set}, daemon=True)
    thread.start()
    assert ready.wait(30)
    yield svc, slot
    svc.stop_event.set()
    thread.join(60)
    assert not thread.is_alive(), "the service did not stop after its in-flight batch"


def ask(kafka: str, prompts: list[str], max_new_tokens: int = 12) -> list[dict[str, Any]]:
    """Publish ``prompts`` together and return their completions in prompt order (each exactly once)."""
    client = InferenceClient(kafka)
    since = now_us()
    sent = [client.publish(p, max_new_tokens=max_new_tokens).request_id for p in prompts]
    by_id = {rec["request_id"]: rec for rec in collect(kafka, set(sent), since)}
    return [by_id[rid] for rid in sent]


def greedy(store: ArtifactStore, sha256: str, prompts: list[str], max_new_tokens: int) -> list[list[int]]:
    """What the stored model answers to ``prompts`` with greedy decoding, computed here, outside the service."""
    gen = InstrumentedGenerator(load_cpu(store.open(sha256)), instrument=False)
    return [g.token_ids for g in gen.generate(prompts, GenParams(max_new_tokens=max_new_tokens))]


def outputs(replies: list[dict[str, Any]]) -> list[list[int]]:
    return [list(r["output_token_ids"]) for r in replies]


@pytest.mark.integration
def test_a_swap_under_load_loses_nothing_and_each_record_names_its_version(
    kafka: str, stored: Stored, served: tuple[InferenceService, ModelSlot]
) -> None:
    svc, slot = served
    va, vb = stored.version(stored.a), stored.version(stored.b)
    assert slot.current().version == va

    before = ask(kafka, PROMPTS)
    assert [(r["model_version"], r["error"]) for r in before] == [(va, None)] * len(PROMPTS)
    a_outputs = outputs(before)
    assert all(a_outputs), "greedy decoding produced no tokens: the comparison below would compare nothing"

    # a backlog in flight; once the service is into it, swap to B from another thread (the follower's place)
    client = InferenceClient(kafka)
    since = now_us()
    served_before = svc.served
    prompt_of = {}
    for i in range(48):
        prompt = f"{PROMPTS[i % len(PROMPTS)]} #{i}"
        prompt_of[client.publish(prompt, max_new_tokens=24).request_id] = prompt
    in_flight = list(prompt_of)
    deadline = time.monotonic() + 120
    while svc.served < served_before + 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert svc.served >= served_before + 4, "the service never started on the backlog"
    result = slot.swap(vb, artifact_loader(stored.store, stored.b, load_cpu))
    assert (result.version, result.accepted, result.error) == (vb, True, None)
    after = []
    for p in PROMPTS:
        after.append(client.publish(f"{p} after", max_new_tokens=24).request_id)
        prompt_of[after[-1]] = f"{p} after"

    recs = collect(kafka, set(in_flight) | set(after), since)
    counts = Counter(r["request_id"] for r in recs)
    assert counts == Counter(in_flight + after), "a request was lost or served twice"
    assert [r for r in recs if r["error"] is not None or r["finish_reason"] not in ("STOP", "LENGTH")] == []
    by_id = {r["request_id"]: r for r in recs}
    assert {by_id[rid]["model_version"] for rid in after} == {vb}, "a request published after the swap met model A"
    in_flight_versions = Counter(by_id[rid]["model_version"] for rid in in_flight)
    assert set(in_flight_versions) == {va, vb}, f"the swap did not land inside the backlog: {in_flight_versions}"
    # the switch happens between batches: in completion order, every A comes before every B
    order = [r["model_version"] for r in sorted(recs, key=lambda r: r["completed_at_us"])]
    n_a = order.count(va)
    assert order == [va] * n_a + [vb] * (len(order) - n_a)
    # and the version named is the one that answered: each output is what that very model says to that prompt
    prompts = sorted(set(prompt_of.values()))
    want = {
        v: dict(zip(prompts, greedy(stored.store, sha, prompts, 24), strict=True))
        for v, sha in [(va, stored.a), (vb, stored.b)]
    }
    assert sum(want[va][p] != want[vb][p] for p in prompts) >= 0.9 * len(prompts), "A and B answer alike"
    assert {r["request_id"]: r["output_token_ids"] for r in recs} == {
        r["request_id"]: want[r["model_version"]][prompt_of[r["request_id"]]] for r in recs
    }

    # every step event names the same version as its completion, one per generated token
    steps = client.trace_steps({r["trace_id"] for r in recs}, sum(r["token_count"] for r in recs), timeout_s=120)
    version_of = {r["trace_id"]: r["model_version"] for r in recs}
    assert Counter((s["trace_id"], s["model_version"]) for s in steps) == Counter(
        {(r["trace_id"], r["model_version"]): r["token_count"] for r in recs}
    )
    assert {version_of[s["trace_id"]] for s in steps} == {va, vb}

    b_replies = ask(kafka, PROMPTS)
    assert [r["model_version"] for r in b_replies] == [vb] * len(PROMPTS)
    assert outputs(b_replies) != a_outputs, "A and B answer alike: swapping back could not be told from staying"

    # back to A, loaded again from its verified artifact: the very answers A gave before
    result = slot.swap(va, artifact_loader(stored.store, stored.a, load_cpu))
    assert (result.accepted, result.error) == (True, None)
    again = ask(kafka, PROMPTS)
    assert [r["model_version"] for r in again] == [va] * len(PROMPTS)
    assert outputs(again) == a_outputs
    assert svc.swaps == 2


@pytest.mark.integration
def test_an_altered_artifact_is_refused_and_the_serving_version_keeps_answering(
    kafka: str, stored: Stored, served: tuple[InferenceService, ModelSlot], caplog: pytest.LogCaptureFixture
) -> None:
    svc, slot = served
    serving = slot.current().version
    weights = stored.store.open(stored.c) / "model.safetensors"
    weights.chmod(0o644)
    data = bytearray(weights.read_bytes())
    data[-7] ^= 0x40
    weights.write_bytes(bytes(data))
    loads: list[Path] = []

    def counting_load(path: Path) -> LoadedModel:
        loads.append(path)
        return load_cpu(path)

    caplog.set_level(logging.INFO, logger="evostream.swap")
    vc = stored.version(stored.c)
    swaps_before = svc.swaps
    result = slot.swap(vc, artifact_loader(stored.store, stored.c, counting_load))
    assert not result.accepted
    assert result.error is not None and result.error.startswith(f"ArtifactError: artifact sha256:{stored.c} at ")
    assert "model.safetensors differs: expected sha256 " in result.error
    assert loads == [], "the altered model was loaded"
    refusals = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "evostream.swap"]
    assert [r.getMessage() for r in refusals] == [
        f"refused model version {vc} ({result.error}); {serving} keeps serving"
    ]
    assert slot.current().version == serving
    replies = ask(kafka, PROMPTS)
    assert [(r["model_version"], r["error"]) for r in replies] == [(serving, None)] * len(PROMPTS)
    assert svc.swaps == swaps_before


def test_swapping_to_the_version_already_served_loads_nothing() -> None:
    lm = tiny("t5")
    slot = ModelSlot(ServingModel("v1", lm))
    calls: list[int] = []

    def load() -> LoadedModel:
        calls.append(1)
        return tiny("t5", seed=1)

    assert slot.swap("v1", load).accepted
    assert calls == []
    assert slot.current() == ServingModel("v1", lm)


def test_a_model_the_service_could_not_instrument_is_refused_before_it_serves() -> None:
    eager = tiny("gpt2", attn="eager")
    slot = ModelSlot(ServingModel("v1", eager), validate=lambda lm: check_servable(lm, "ENTROPY"))
    sdpa = tiny("gpt2", attn="sdpa", seed=1)
    with pytest.raises(GenerationError, match="needs attn_implementation='eager'"):
        check_servable(sdpa, "ENTROPY")
    result = slot.swap("v2", lambda: sdpa)
    assert (result.accepted, result.error) == (
        False,
        "GenerationError: tiny-gpt2 was loaded with sdpa attention, "
        "but the service reports attention ENTROPY, which needs "
        "attn_implementation='eager'",
    )

    def crash() -> LoadedModel:
        raise RuntimeError("CUDA out of memory")

    result = slot.swap("v3", crash)
    assert (result.accepted, result.error) == (False, "RuntimeError: CUDA out of memory")
    assert slot.current() == ServingModel("v1", eager)
    assert slot.swap("v4", lambda: tiny("gpt2", attn="eager", seed=2)).accepted
    assert slot.current().version == "v4"


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and r.name == "evostream.serve"]


def hooked_modules(lm: LoadedModel) -> list[str]:
    return [name for name, m in lm.model.named_modules() if m._forward_hooks or m._forward_pre_hooks]


@pytest.mark.integration
def test_the_service_refuses_a_model_it_cannot_instrument_and_unhooks_the_one_it_leaves(
    kafka: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The switch itself, step by step (``follow`` is what the serving loop calls between batches), on a service
    that reports exact attention entropy: a model without eager attention cannot, so it is refused at the switch."""
    first = tiny("gpt2", attn="eager")
    slot = ModelSlot(ServingModel("v1", first), validate=lambda lm: None)  # no check before: the service must refuse
    options = ServeOptions(max_batch=4, max_wait_ms=20, max_prompt_tokens=64)
    svc = InferenceService(kafka, first, None, options, InstrumentedGenerator(first, "ENTROPY"), models=slot)
    try:
        assert hooked_modules(first) != []
        caplog.set_level(logging.INFO, logger="evostream.serve")
        assert slot.swap("v2", lambda: tiny("gpt2", attn="sdpa", seed=1)).accepted
        svc.follow()
        assert errors(caplog) == [
            "cannot serve model version v2: attention ENTROPY needs the model loaded with "
            "attn_implementation='eager'; v1 keeps serving"
        ]
        assert (svc.serving.version, svc.loaded, svc.swaps) == ("v1", first, 0)
        svc.follow()  # the refused model is not retried at every batch
        assert len(errors(caplog)) == 1

        third = tiny("gpt2", attn="eager", seed=2)
        assert slot.swap("v3", lambda: third).accepted
        svc.follow()
        assert (svc.serving.version, svc.loaded, svc.swaps, svc.generator.signal) == ("v3", third, 1, "ENTROPY")
        assert hooked_modules(first) == [], "the model no longer served still carries the probe's hooks"
        assert hooked_modules(third) != []
        assert svc.generator.loaded is third
    finally:
        svc.generator.close()
        svc.emitter.close()
        assert not hasattr(svc, "consumer")  # never run: it never joined the requests' consumer group
