"""The request client against the real broker: pipelined requests, routed replies, bounded in flight, asyncio, and
two services sharing the load in one consumer group."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from evostream.core.clock import now_us
from evostream.producers.client import BadRequestError, InferenceClient
from evostream.producers.generate import GenParams, InstrumentedGenerator
from evostream.producers.service import InferenceService, ServeOptions
from evostream.producers.steps import TraceMeta
from tests.producers.models import tiny
from tests.producers.replies import collect

pytestmark = pytest.mark.integration

MAX_NEW = 8


def prompts(n: int, tag: str) -> list[str]:
    return [f"reverse: {tag}{i} word{i % 7}" for i in range(n)]


def greedy(prompt_list: list[str]) -> dict[str, list[int]]:
    """What the served model (the same tiny T5, built again from its seed) answers, computed here, one at a time."""
    gen = InstrumentedGenerator(tiny("t5", varied=True), instrument=False)
    return {p: gen.generate([p], GenParams(max_new_tokens=MAX_NEW))[0].token_ids for p in prompt_list}


class CountingService(InferenceService):
    """The real service, noting the request id of every Completion it sends (which member served what)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.answered: list[str] = []

    def _complete(self, meta: TraceMeta, *args: Any, **kwargs: Any) -> None:
        self.answered.append(meta.request_id)
        super()._complete(meta, *args, **kwargs)


@pytest.fixture(scope="module")
def services(kafka: str) -> Iterator[list[CountingService]]:
    """Two services in the serving group, each with its own copy of one tiny T5 (same seed, same weights)."""
    svcs = [
        CountingService(
            kafka,
            tiny("t5", varied=True),
            None,
            ServeOptions(max_batch=8, max_wait_ms=10, max_prompt_tokens=64, batching="continuous"),
        )
        for _ in range(2)
    ]
    threads = []
    for svc in svcs:
        ready = threading.Event()
        t = threading.Thread(target=svc.run, kwargs={"on_ready": ready.set}, daemon=True)
        t.start()
        assert ready.wait(30)
        threads.append(t)
    # both members hold partitions before the test sends anything (else the first may take every request while the
    # second is still joining)
    deadline = time.monotonic() + 60
    while not all(svc.consumer.assigned for svc in svcs) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(svc.consumer.assigned for svc in svcs), "a service never got partitions"
    yield svcs
    for svc in svcs:
        svc.stop_event.set()
    for t in threads:
        t.join(60)
        assert not t.is_alive(), "a service did not stop after its in-flight batch"


def test_pipelined_requests_shared_by_two_services_are_each_answered_once_and_right(
    kafka: str, services: list[CountingService]
) -> None:
    asked = prompts(120, "p")
    want = greedy(asked)
    assert len({tuple(v) for v in want.values()}) > 10, "the model answers alike: the comparison would prove little"
    since = now_us()
    with InferenceClient(kafka, max_in_flight=64) as client:
        replies = client.infer_many(asked, timeout_s=120, max_new_tokens=MAX_NEW)
        routed = client._book.delivered
        reader_read = client._reader.read if client._reader else 0
    # in order, whole outputs: each reply is the model's own greedy answer to that very prompt
    assert [r["output_token_ids"] for r in replies] == [want[p] for p in asked]
    assert [r["error"] for r in replies] == [None] * len(asked)
    assert routed == len(asked) and reader_read >= len(asked)
    # each request served once (read back from the topic, duplicates counted), by one of the two services
    recs = collect(kafka, {r["request_id"] for r in replies}, since)
    assert Counter(r["request_id"] for r in recs) == Counter(r["request_id"] for r in replies)
    ours = Counter(r["request_id"] for r in replies)
    by_member = [Counter(rid for rid in s.answered if rid in ours) for s in services]
    assert by_member[0] + by_member[1] == ours, "a request was answered by both members, or by neither"
    shares = [sum(c.values()) for c in by_member]
    assert min(shares) > 0, f"one service served everything: {shares}"


def test_asyncio_requests_run_concurrently_and_are_answered_right(kafka: str, services: list[CountingService]) -> None:
    asked = prompts(40, "a")
    want = greedy(asked)

    async def main(client: InferenceClient) -> list[dict[str, object]]:
        return await asyncio.gather(*(client.ainfer(p, timeout_s=120, max_new_tokens=MAX_NEW) for p in asked))

    with InferenceClient(kafka, max_in_flight=8) as client:
        replies = asyncio.run(main(client))
    assert [r["output_token_ids"] for r in replies] == [want[p] for p in asked]


def test_publish_then_await_routes_through_the_reader_and_publish_many_acks_once(
    kafka: str, services: list[CountingService]
) -> None:
    asked = prompts(12, "m")
    want = greedy(asked)
    with InferenceClient(kafka) as client:
        sent = client.publish_many(asked, max_new_tokens=MAX_NEW)
        # the replies come before anyone asks for them: they must be kept, not dropped
        deadline = time.monotonic() + 120
        while not all(client._book.has_reply(s.request_id) for s in sent) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(client._book.has_reply(s.request_id) for s in sent), "a reply was not kept for its later ask"
        replies = [client.await_reply(s, 60) for s in sent]
        assert client._book.delivered == 0  # no waiter got them: they were all kept for the later asks
    assert [r["output_token_ids"] for r in replies] == [want[p] for p in asked]
    assert [r["request_id"] for r in replies] == [s.request_id for s in sent]


def test_bad_arguments_are_refused_before_anything_is_sent(kafka: str) -> None:
    with pytest.raises(BadRequestError, match="max_in_flight must be >= 1"):
        InferenceClient(kafka, max_in_flight=0)
    with InferenceClient(kafka) as client:
        with pytest.raises(BadRequestError, match="the prompt is empty"):
            client.publish_many(["reverse: fine", "  "])
        with pytest.raises(BadRequestError, match="2 prompts but 1 request ids"):
            client.publish_many(["a", "b"], request_ids=["x"])
        assert client._reader is None  # nothing was checked by sending
