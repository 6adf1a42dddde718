"""The main job on the embedded default: serve the default model in-process and answer one prompt per suite task
through Kafka, showing each answer, its trace id, and that evo.steps holds one event per generated token."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from evostream.errors import EvoError
from producers.client import InferenceClient
from producers.embedding import PromptEmbedder
from producers.loading import load_model
from producers.service import InferenceService, ServeOptions
from producers.suite.tasks import make_split


@dataclass(frozen=True)
class DemoAnswer:
    task: str
    prompt: str
    expected: str
    answer: str
    trace_id: str
    tokens: int
    step_events: int
    total_ms: float
    risk: dict[str, Any] | None = None
    """The FINAL RiskReport of the trace, when the stream processors ran alongside."""


def run_demo(bootstrap: str, say: Callable[[str], None], timeout_s: float = 120.0) -> list[DemoAnswer]:
    loaded = load_model("default")
    service = InferenceService(bootstrap, loaded, PromptEmbedder(), ServeOptions(max_batch=8, max_wait_ms=20))
    ready = threading.Event()
    thread = threading.Thread(target=service.run, kwargs={"on_ready": ready.set}, daemon=True)
    thread.start()
    if not ready.wait(30):
        raise EvoError("the inference service did not start")
    say(f"serving {loaded.version} ({loaded.parameter_count():,} parameters) on {loaded.device}")
    try:
        examples = {e.task: e for e in make_split("demo", 1)}
        client = InferenceClient(bootstrap, tenant="demo")
        sent = {task: client.publish(e.prompt, max_new_tokens=32) for task, e in examples.items()}
        replies = {task: client.await_reply(s, timeout_s) for task, s in sent.items()}
    finally:
        service.stop_event.set()
        thread.join(60)
    traces = {r["trace_id"] for r in replies.values()}
    steps = client.trace_steps(traces, sum(r["token_count"] for r in replies.values()), timeout_s)
    counts = Counter(s["trace_id"] for s in steps)
    return [
        DemoAnswer(
            task,
            examples[task].prompt,
            examples[task].answer,
            r["output_text"],
            r["trace_id"],
            r["token_count"],
            counts[r["trace_id"]],
            r["timings"]["total_us"] / 1000,
        )
        for task, r in replies.items()
    ]


def final_risk(bootstrap: str, traces: set[str], timeout_s: float = 60.0) -> dict[str, dict[str, Any]]:
    """The FINAL RiskReport of each trace in ``traces`` (those that arrive within ``timeout_s``)."""
    import time
    import uuid

    from evostream.bus.consumer import EventConsumer
    from schemas.catalog import RISK
    from schemas.codec import RecordCodec

    codec = RecordCodec("RiskReport")
    found: dict[str, dict[str, Any]] = {}
    with EventConsumer(bootstrap, f"evostream-demo-{uuid.uuid4().hex[:8]}", [RISK]) as consumer:
        deadline = time.monotonic() + timeout_s
        while set(found) != traces and time.monotonic() < deadline:
            for m in consumer.poll_batch(1000, 0.5):
                r = codec.decode_or_skip(m.value())
                if r is not None and r["trace_id"] in traces and r["stage"] == "FINAL":
                    found[r["trace_id"]] = r
    return found


def with_risk(bootstrap: str, answers: list[DemoAnswer], timeout_s: float = 60.0) -> list[DemoAnswer]:
    reports = final_risk(bootstrap, {a.trace_id for a in answers}, timeout_s)
    return [replace(a, risk=reports.get(a.trace_id)) for a in answers]
