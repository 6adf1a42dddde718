"""The OTLP sink against a real OTLP receiver (opentelemetry-proto services), over gRPC and HTTP/protobuf: the shared
contract, every GenAI attribute of a request span, risk spans with their flagged-step events, and the metrics."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import grpc
import pytest

from consumers.sinks.contract import Status
from plugins.api import Sink, SinkContext
from plugins.otlp import OtlpSink, request_span_id, trace_id_of
from schemas.catalog import STEPS
from tests.plugins.contract import Kind, SinkContract
from tests.plugins.otlp_receiver import Received, Receiver
from tests.plugins.samples import sample_records


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


def endpoint(r: Receiver, protocol: str) -> str:
    return f"127.0.0.1:{r.grpc_port}" if protocol == "grpc" else f"http://127.0.0.1:{r.http_port}"


class OtlpContract(SinkContract):
    sink_name = "otlp"
    protocol: ClassVar[str]

    @pytest.fixture(autouse=True)
    def _receiver(self, receiver: Receiver) -> None:
        receiver.got = Received()
        receiver.fail_next(0, grpc.StatusCode.OK)
        self.receiver = receiver

    def options(self, tmp_path: Path) -> dict[str, str]:
        return {"protocol": self.protocol, "endpoint": endpoint(self.receiver, self.protocol), "timeout_s": "5"}

    def make_sink(self, ctx: SinkContext) -> Sink:
        return OtlpSink(ctx)

    def stored(self, sink: Sink) -> Counter[str]:
        """Spans the receiver holds, one per span id (a span sent again is the same span), by evostream record."""
        unique = {(s.trace_id, s.span_id): s.attributes["evostream.record"] for s in self.receiver.got.spans}
        return Counter(unique.values())

    @contextlib.contextmanager
    def failing(self, sink: Sink, kind: Kind, times: int) -> Iterator[None]:
        code = grpc.StatusCode.UNAVAILABLE if kind == "retryable" else grpc.StatusCode.INVALID_ARGUMENT
        self.receiver.fail_next(times, code)
        try:
            yield
        finally:
            self.receiver.fail_next(0, code)

    def bad_options(self, tmp_path: Path) -> dict[str, str] | None:
        return {"protocol": "carrier-pigeon"}


class TestOtlpGrpcContract(OtlpContract):
    protocol = "grpc"


class TestOtlpHttpContract(OtlpContract):
    protocol = "http/protobuf"


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_a_request_span_carries_every_genai_attribute(receiver: Receiver, tmp_path: Path, protocol: str) -> None:
    receiver.got = Received()
    sink = OtlpSink(SinkContext("otlp", tmp_path, {"protocol": protocol, "endpoint": endpoint(receiver, protocol),
                                                   "headers": "x-tenant=acme"}))  # fmt: skip
    try:
        assert sink.write(sample_records(sink.topics, per_topic=3)).status is Status.OK
        assert sink.flush().status is Status.OK
    finally:
        sink.close()
    spans = {(s.name, s.attributes["evostream.record"]): s for s in receiver.got.spans}
    req = spans["text_completion tiny-b", "evo.completions:0:1"]
    assert req.attributes == {
        "gen_ai.operation.name": "text_completion", "gen_ai.provider.name": "evostream",
        "gen_ai.request.model": "tiny-b", "gen_ai.response.model": "tiny-b", "gen_ai.response.id": "req-1",
        "gen_ai.usage.input_tokens": 8, "gen_ai.usage.output_tokens": 5, "gen_ai.response.finish_reasons": ["stop"],
        "evostream.trace_id": "trace-1", "evostream.tenant": "acme", "evostream.queue_us": 200,
        "evostream.prefill_us": 3100, "evostream.decode_us": 21000, "evostream.record": "evo.completions:0:1",
    }  # fmt: skip
    assert req.kind == 2 and req.parent_span_id == ""  # SPAN_KIND_SERVER, a root span
    assert req.end_ns - req.start_ns == 25_000 * 1000 and req.end_ns == (1_795_000_000_000_000 + 1000) * 1000
    assert req.trace_id == f"{trace_id_of('trace-1'):032x}" and req.span_id == f"{request_span_id('trace-1'):016x}"
    assert req.resource["service.name"] == "evostream"
    # the risk report of the same trace is a child with one event per flag; the alert too
    risk = spans["evaluate_risk tiny-b", "evo.risk:0:1"]
    assert (risk.trace_id, risk.parent_span_id) == (req.trace_id, req.span_id)
    assert risk.events == [("evostream.risk.flag", {"evostream.risk.flag": "high_entropy"}),
                           ("evostream.risk.flag", {"evostream.risk.flag": "low_margin"})]  # fmt: skip
    assert risk.attributes["evostream.risk.score"] == pytest.approx(0.751)
    assert spans["evaluate_risk tiny-a", "evo.risk:0:0"].events == []  # nothing flagged, no event
    alert = spans["risk_alert warning", "evo.alerts:0:1"]
    assert alert.parent_span_id == req.span_id and alert.attributes["evostream.alert.severity"] == "WARNING"
    assert all(h.get("x-tenant") == "acme" for h in receiver.got.headers)
    # metrics: input and output token usage of the three requests, by token type
    last = receiver.got.metrics[-1]
    usage = {(a["gen_ai.token.type"], a["gen_ai.request.model"]): p["sum"]
             for a, p in last["gen_ai.client.token.usage"]["points"]}  # fmt: skip
    assert usage == {("input", "tiny-a"): 7 + 9, ("output", "tiny-a"): 4 + 6, ("input", "tiny-b"): 8,
                     ("output", "tiny-b"): 5}  # fmt: skip
    assert last["gen_ai.client.operation.duration"]["unit"] == "s"
    assert {tuple(a.items()): v for a, v in last["evostream.risk.alerts"]["points"]} == {
        (("evostream.alert.severity", "INFO"), ("gen_ai.request.model", "tiny-a")): 1,
        (("evostream.alert.severity", "WARNING"), ("gen_ai.request.model", "tiny-b")): 1,
        (("evostream.alert.severity", "CRITICAL"), ("gen_ai.request.model", "tiny-a")): 1,
    }


def test_an_early_report_marks_its_flagged_step(receiver: Receiver, tmp_path: Path) -> None:
    receiver.got = Received()
    recs = sample_records(("evo.risk",), per_topic=2)
    early = recs[1].value | {"stage": "EARLY", "step": 3}
    from tests.plugins.samples import records

    sink = OtlpSink(SinkContext("otlp", tmp_path, {"endpoint": endpoint(receiver, "grpc")}))
    try:
        assert sink.write(records("evo.risk", [early], first_offset=9)).status is Status.OK
    finally:
        sink.close()
    (span,) = receiver.got.spans
    assert span.events == [("evostream.risk.flagged_step", {"evostream.risk.flag": "high_entropy",
                                                            "evostream.risk.step": 3}),
                           ("evostream.risk.flagged_step", {"evostream.risk.flag": "low_margin",
                                                            "evostream.risk.step": 3})]  # fmt: skip


def test_steps_all_reads_the_step_topic_and_sends_a_span_per_token(receiver: Receiver, tmp_path: Path) -> None:
    receiver.got = Received()
    sink = OtlpSink(SinkContext("otlp", tmp_path, {"endpoint": endpoint(receiver, "grpc"), "steps": "all"}))
    try:
        assert STEPS in sink.topics
        assert sink.write(sample_records((STEPS,), per_topic=4)).status is Status.OK
    finally:
        sink.close()
    names = sorted(s.name for s in receiver.got.spans)
    assert names == ["generate_token 0", "generate_token 1", "generate_token 2", "generate_token 3"]
    assert {s.parent_span_id for s in receiver.got.spans} == {f"{request_span_id('trace-0'):016x}"}


def test_a_receiver_that_is_down_is_retryable(tmp_path: Path) -> None:
    from evostream.stack.ports import free_port

    for protocol, url in (("grpc", f"127.0.0.1:{free_port()}"), ("http/protobuf", f"http://127.0.0.1:{free_port()}")):
        sink = OtlpSink(SinkContext("otlp", tmp_path, {"protocol": protocol, "endpoint": url, "timeout_s": "1"}))
        try:
            out = sink.write(sample_records(sink.topics, per_topic=1))
        finally:
            sink.close()
        assert out.status is Status.RETRYABLE and url.split("//")[-1] in out.reason, out
