"""Reference targets: ``--reference`` parsing, and the OpenAI-compatible HTTP target against a real HTTP server that
speaks the wire format (checking each request body it gets), then as the reference of a routed service on the real
broker."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from evostream.core.bus.reader import TopicReader
from evostream.core.clock import now_us
from evostream.models.loading import load_model
from evostream.producers.client import InferenceClient
from evostream.producers.generate import GenParams
from evostream.producers.routing import Route
from evostream.producers.service import InferenceService, ServeOptions
from evostream.producers.steps import TraceMeta
from evostream.producers.targets import Answer, Emit, OpenAITarget, ReferenceSpec, TargetError, parse_reference
from evostream.routing.policy import LevelGate, RoutePolicy, Router
from evostream.routing.prices import PriceTable
from evostream.schemas.catalog import ROUTES
from tests.producers.openai_server import Backend, openai_server
from tests.producers.replies import read


@pytest.fixture
def server() -> Iterator[tuple[str, Backend]]:
    with openai_server() as running:
        yield running


def no_emit(*_: Any) -> None:
    raise AssertionError("an HTTP target emits no steps")


META = [TraceMeta("t", "r", "r", "default", 0)]


def test_references_parse_and_bad_ones_are_refused_with_the_reason() -> None:
    assert parse_reference("governed:m@0123") == ReferenceSpec("governed", version="m@0123")
    assert parse_reference("http://gpu:8000/v1#llama-3") == ReferenceSpec(
        "http", base_url="http://gpu:8000/v1", model="llama-3"
    )
    assert parse_reference("https://api.example.com/v1/") == ReferenceSpec(
        "http", base_url="https://api.example.com/v1"
    )
    for bad, why in [
        ("", "needs a reference"),
        ("governed:", "names no version"),
        ("http://:80/v1", "names no host"),
        ("http://host:port/v1", "port"),
        ("http://host/v1?model=x", "no query"),
        ("ftp://host/v1", "neither governed"),
        ("my-model@0123", "neither governed"),
    ]:
        with pytest.raises(TargetError, match=why):
            parse_reference(bad)


def test_the_http_target_sends_the_openai_body_and_reads_the_answer(server: tuple[str, Backend]) -> None:
    url, backend = server
    target = OpenAITarget(url, None, timeout_s=5)  # no model named: the server's first
    try:
        assert target.version == "external:big-model"
        greedy = target.answer(["add: 1+2"], GenParams(max_new_tokens=9), META, no_emit)
        sampled = target.answer(
            ["add: 1+2"], GenParams(max_new_tokens=9, do_sample=True, temperature=0.7, top_p=0.9, seed=3), META, no_emit
        )
    finally:
        target.close()
    assert backend.bodies[0] == {
        "model": "big-model",
        "prompt": "add: 1+2",
        "max_tokens": 9,
        "stream": False,
        "temperature": 0.0,
    }
    assert backend.bodies[1] == dict(backend.bodies[0], temperature=0.7, top_p=0.9, seed=3)
    (a,) = greedy
    assert a.error is None and a.text == "the reference's answer" and a.output_tokens == 5
    assert a.generated is not None and a.generated.prompt_tokens == 7 and a.generated.finish_reason == "LENGTH"
    assert sampled[0].error is None


def test_a_batch_of_prompts_is_asked_at_once_and_answered_in_order(server: tuple[str, Backend]) -> None:
    url, backend = server
    backend.delay_s, backend.echo = 0.3, True  # each answer takes a while: the batch's requests overlap on the server
    target = OpenAITarget(url, "big-model", timeout_s=5, max_concurrent=4)
    try:
        answers = target.answer([f"p{i}" for i in range(6)], GenParams(max_new_tokens=3), META * 6, no_emit)
    finally:
        target.close()
    assert [a.text for a in answers] == [f"answer to p{i}" for i in range(6)]
    assert sorted(b["prompt"] for b in backend.bodies) == [f"p{i}" for i in range(6)]
    assert 1 < backend.most_in_flight <= 4


def test_an_http_error_or_a_timeout_is_an_error_answer_with_the_reason(server: tuple[str, Backend]) -> None:
    url, backend = server
    target = OpenAITarget(url, "big-model", timeout_s=0.5)
    try:
        backend.status = 503
        (failed,) = target.answer(["x"], GenParams(max_new_tokens=3), META, no_emit)
        backend.status, backend.delay_s = 200, 2.0
        (slow,) = target.answer(["x"], GenParams(max_new_tokens=3), META, no_emit)
    finally:
        target.close()
    assert failed.generated is None and "HTTP 503" in (failed.error or "") and "overloaded" in (failed.error or "")
    assert slow.generated is None and "within 0.5 s" in (slow.error or "")
    gone = OpenAITarget("http://127.0.0.1:9/v1", "m", timeout_s=1)
    try:
        (refused,) = gone.answer(["x"], GenParams(max_new_tokens=3), META, no_emit)
    finally:
        gone.close()
    assert "ConnectError" in (refused.error or "")
    with pytest.raises(TargetError, match="did not list its models"):
        OpenAITarget("http://127.0.0.1:9/v1", None, timeout_s=1)


@pytest.mark.integration
def test_a_routed_service_answers_through_the_http_reference(kafka: str, server: tuple[str, Backend]) -> None:
    """Level 0: every request goes to the HTTP reference before generation; its answer is the request's final
    Completion, priced by the table, and a failing reference answers with an error Completion, not a crash."""
    url, backend = server
    loaded = load_model("default", device="cpu")
    policy = RoutePolicy("default", None, "", (LevelGate(1, 0.2, 0.5, 1.0),))
    router = Router(policy, 0, policy_version="p0")
    prices = PriceTable.from_json({"external:*": {"prompt_per_1k": 1.0, "output_per_1k": 2.0}})
    route = Route("default", lambda: router, OpenAITarget(url, "big-model", timeout_s=5), prices)
    svc = InferenceService(kafka, loaded, None, ServeOptions(max_batch=4, max_wait_ms=20), route=route)
    ready = threading.Event()
    thread = threading.Thread(target=svc.run, kwargs={"on_ready": ready.set}, daemon=True)
    thread.start()
    since = now_us()
    try:
        assert ready.wait(60)
        with InferenceClient(kafka) as client:
            ok = client.infer("upper: ab", timeout_s=60, max_new_tokens=4)
            backend.status = 500
            failed = client.infer("upper: cd", timeout_s=60, max_new_tokens=4)
    finally:
        svc.stop_event.set()
        thread.join(60)
        route.reference.close()
    assert not thread.is_alive()
    assert (ok["model_version"], ok["output_text"], ok["token_count"]) == ("external:big-model", backend.text, 5)
    assert ok["finish_reason"] == "LENGTH" and ok["prompt_token_count"] == 7
    assert ok["cost_usd"] == pytest.approx((7 * 1.0 + 5 * 2.0) / 1000)
    assert [b["prompt"] for b in backend.bodies] == ["upper: ab", "upper: cd"]
    assert failed["finish_reason"] == "ERROR" and "HTTP 500" in failed["error"] and failed["cost_usd"] == 0.0
    decisions = read(kafka, ROUTES, "RouteDecision", {ok["request_id"], failed["request_id"]}, since, 2)
    for d in decisions:
        assert (d["stage"], d["chosen"], d["chosen_version"], d["level"]) == (
            "PROMPT",
            "reference",
            "external:big-model",
            0,
        )
        assert "level 0" in d["reason"]


@pytest.mark.integration
def test_a_route_with_no_router_in_force_serves_unrouted(kafka: str, server: tuple[str, Backend]) -> None:
    """A governed route with no level approved gives no Router: the served model answers, nothing is decided, the
    reference is not asked."""
    url, backend = server
    loaded = load_model("default", device="cpu")
    route = Route("default", lambda: None, OpenAITarget(url, "big-model", timeout_s=5), PriceTable())
    svc = InferenceService(kafka, loaded, None, ServeOptions(max_batch=4, max_wait_ms=20), route=route)
    ready = threading.Event()
    thread = threading.Thread(target=svc.run, kwargs={"on_ready": ready.set}, daemon=True)
    thread.start()
    since = now_us()
    try:
        assert ready.wait(60)
        with InferenceClient(kafka) as client:
            reply = client.infer("upper: ab", timeout_s=60, max_new_tokens=8)
    finally:
        svc.stop_event.set()
        thread.join(60)
        route.reference.close()
    assert (reply["model_version"], reply["output_text"]) == (loaded.version, "AB")
    assert backend.bodies == []
    with TopicReader(kafka, ROUTES, "RouteDecision", since_us=since - 5_000_000, idle_s=2.0, timeout_s=30) as reader:
        assert [d for d in reader if d["request_id"] == reply["request_id"]] == []


GARBAGE = [
    (b'{"choices": [{"text": "fine", "finish_reason": "stop"}], "usage": "n/a"}', "usage is not an object"),
    (b'{"choices": [{"text": "fine", "finish_reason": "stop"}], "usage": [1]}', "usage is not an object"),
    (b'{"choices": [{"text": "fine"}], "usage": {"prompt_tokens": 3, "completion_tokens": -50}}', "completion_tokens"),
    (b'{"choices": [{"text": "fine"}], "usage": {"prompt_tokens": "7", "completion_tokens": 5}}', "prompt_tokens"),
    (b'{"choices": [{"text": "fine"}], "usage": {"prompt_tokens": true, "completion_tokens": 5}}', "prompt_tokens"),
    (b'{"choices": [{"text": null, "finish_reason": "stop"}]}', "text is not a string"),
    (b"this is not json", "not JSON"),
    (b"[1, 2]", "not an object"),
    (b'{"choices": []}', "no choices"),
    (b'{"choices": "fine"}', "no choices"),
    (b'{"choices": ["fine"]}', "choice is not an object"),
    (b'{"data": 1}', "no choices"),
    (b"\xff\xfe\x00", "not JSON"),
]


def test_an_answer_that_is_not_the_wire_format_is_an_error_answer_with_the_reason(
    server: tuple[str, Backend],
) -> None:
    """A 200 whose body is garbage (a usage that is no object, negative or non-integer counts, a null text, no JSON,
    the wrong shape) is that prompt's error answer saying what is wrong, never an exception or a made-up answer."""
    url, backend = server
    target = OpenAITarget(url, "big-model", timeout_s=5)
    try:
        for body, why in GARBAGE:
            backend.garbage = body
            (a,) = target.answer(["x"], GenParams(max_new_tokens=3), META, no_emit)
            assert a.generated is None and a.text == "", body
            assert "did not answer in the OpenAI format" in (a.error or "") and why in (a.error or ""), (body, a.error)
            two = target.answer(["x", "y"], GenParams(max_new_tokens=3), META * 2, no_emit)  # through the pool too
            assert all(why in (b.error or "") for b in two), (body, two)
        backend.garbage = b'{"choices": [{"text": "fine"}]}'  # no usage at all: counted as none, not an error
        (ok,) = target.answer(["x"], GenParams(max_new_tokens=3), META, no_emit)
    finally:
        target.close()
    assert ok.error is None and ok.text == "fine" and ok.output_tokens == 0


def test_a_batch_waits_on_the_http_reference_no_longer_than_its_deadline(server: tuple[str, Backend]) -> None:
    """Each call may take ``timeout_s``, but the batch's calls together end by ``batch_deadline_s``: the answers in
    by then are kept, the others are error answers saying so (a batch never holds the serving thread past it)."""
    url, backend = server
    backend.delay_s, backend.echo = 1.0, True
    target = OpenAITarget(url, "big-model", timeout_s=30, max_concurrent=2, batch_deadline_s=1.6)
    try:
        started = time.monotonic()
        answers = target.answer([f"p{i}" for i in range(4)], GenParams(max_new_tokens=3), META * 4, no_emit)
        took = time.monotonic() - started
    finally:
        target.close()
    assert took < 2.5, took
    assert [a.text for a in answers[:2]] == ["answer to p0", "answer to p1"]  # the first two, in at about 1 s
    for a in answers[2:]:  # asked at about 1 s, cut at 1.6 s
        assert a.generated is None and "by the batch's deadline" in (a.error or ""), a.error
        assert "within 1.6 s" in (a.error or "")


def test_the_batch_deadline_is_shared_by_its_calls(server: tuple[str, Backend]) -> None:
    """A batch's groups each call ``answer``; given the batch's deadline, a later call has only what is left of it."""
    url, backend = server
    backend.delay_s = 1.0
    target = OpenAITarget(url, "big-model", timeout_s=30)
    try:
        deadline = time.monotonic() + 1.5
        (first,) = target.answer(["p0"], GenParams(max_new_tokens=3), META, no_emit, deadline)
        started = time.monotonic()
        (second,) = target.answer(["p1"], GenParams(max_new_tokens=3), META, no_emit, deadline)
        took = time.monotonic() - started
    finally:
        target.close()
    assert first.error is None
    assert second.generated is None and "by the batch's deadline" in (second.error or "") and took < 0.9, took


class Exploding(OpenAITarget):
    """An HTTP reference whose target itself fails on prompts starting "boom" (a bug, not a bad answer)."""

    def answer(
        self,
        prompts: Sequence[str],
        params: GenParams,
        metas: Sequence[TraceMeta],
        emit: Emit,
        deadline: float | None = None,
    ) -> list[Answer]:
        if any(p.startswith("boom") for p in prompts):
            raise AttributeError("'str' object has no attribute 'get'")
        return super().answer(prompts, params, metas, emit, deadline)


@pytest.mark.integration
def test_a_routed_service_answers_a_garbage_reference_with_errors_and_keeps_serving(
    kafka: str, server: tuple[str, Backend]
) -> None:
    """On the real broker: a reference answering garbage, or failing outright, gives each of its requests an error
    Completion with the reason; the service goes on serving the next requests."""
    url, backend = server
    loaded = load_model("default", device="cpu")
    router = Router(RoutePolicy("default", None, "", ()), 0, policy_version="p0")  # level 0: all to the reference
    route = Route("default", lambda: router, Exploding(url, "big-model", timeout_s=5), PriceTable())
    svc = InferenceService(kafka, loaded, None, ServeOptions(max_batch=4, max_wait_ms=20), route=route)
    ready = threading.Event()
    thread = threading.Thread(target=svc.run, kwargs={"on_ready": ready.set}, daemon=True)
    thread.start()
    try:
        assert ready.wait(60)
        with InferenceClient(kafka) as client:
            replies = []
            for body, _ in GARBAGE[:3]:
                backend.garbage = body
                replies.append(client.infer("upper: ab", timeout_s=60, max_new_tokens=4))
            backend.garbage = None
            boom = client.infer("boom", timeout_s=60, max_new_tokens=4)
            ok = client.infer("upper: ab", timeout_s=60, max_new_tokens=4)
        alive = thread.is_alive()
    finally:
        svc.stop_event.set()
        thread.join(60)
        route.reference.close()
    assert alive
    for reply, (_, why) in zip(replies, GARBAGE[:3], strict=True):
        assert reply["finish_reason"] == "ERROR" and why in reply["error"] and reply["cost_usd"] == 0.0, reply
        assert reply["model_version"] == "external:big-model"
    assert boom["finish_reason"] == "ERROR" and "AttributeError" in boom["error"], boom
    assert (ok["output_text"], ok["error"]) == (backend.text, None)
