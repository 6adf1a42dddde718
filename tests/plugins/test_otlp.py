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

from evostream.consumers.sinks.contract import Status
from evostream.core.errors import SinkConfigError
from evostream.plugins.api import Sink, SinkContext
from evostream.plugins.otlp import OtlpSink, request_span_id, trace_id_of
from evostream.schemas.catalog import COMPLETIONS, STEPS
from evostream.schemas.samples import T0_US, completion
from tests.plugins.contract import Kind, SinkContract
from tests.plugins.otlp_receiver import Received, Receiver
from tests.plugins.samples import records, sample_records
from tests.tls import self_signed


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
    sink = OtlpSink(
        SinkContext(
            "otlp",
            tmp_path,
            {"protocol": protocol, "endpoint": endpoint(receiver, protocol), "headers": "x-tenant=acme"},
        )
    )
    try:
        assert sink.write(sample_records(sink.topics, per_topic=3)).status is Status.OK
        assert sink.flush().status is Status.OK
    finally:
        sink.close()
    spans = {(s.name, s.attributes["evostream.record"]): s for s in receiver.got.spans}
    req = spans["text_completion tiny-b", "evo.completions:0:1"]
    assert req.attributes == {
        "gen_ai.operation.name": "text_completion",
        "gen_ai.provider.name": "evostream",
        "gen_ai.request.model": "tiny-b",
        "gen_ai.response.model": "tiny-b",
        "gen_ai.response.id": "req-1",
        "gen_ai.usage.input_tokens": 8,
        "gen_ai.usage.output_tokens": 5,
        "gen_ai.response.finish_reasons": ["stop"],
        "evostream.trace_id": "trace-1",
        "evostream.tenant": "acme",
        "evostream.queue_us": 200,
        "evostream.prefill_us": 3100,
        "evostream.decode_us": 21000,
        "evostream.record": "evo.completions:0:1",
    }
    assert req.kind == 2 and req.parent_span_id == ""  # SPAN_KIND_SERVER, a root span
    assert req.end_ns - req.start_ns == 25_000 * 1000 and req.end_ns == (1_795_000_000_000_000 + 1000) * 1000
    assert req.trace_id == f"{trace_id_of('trace-1'):032x}" and req.span_id == f"{request_span_id('trace-1'):016x}"
    assert req.resource["service.name"] == "evostream"
    # the risk report of the same trace is a child with one event per flag; the alert too
    risk = spans["evaluate_risk tiny-b", "evo.risk:0:1"]
    assert (risk.trace_id, risk.parent_span_id) == (req.trace_id, req.span_id)
    assert risk.events == [
        ("evostream.risk.flag", {"evostream.risk.flag": "high_entropy"}),
        ("evostream.risk.flag", {"evostream.risk.flag": "low_margin"}),
    ]
    assert risk.attributes["evostream.risk.score"] == pytest.approx(0.751)
    assert spans["evaluate_risk tiny-a", "evo.risk:0:0"].events == []  # nothing flagged, no event
    alert = spans["risk_alert warning", "evo.alerts:0:1"]
    assert alert.parent_span_id == req.span_id and alert.attributes["evostream.alert.severity"] == "WARNING"
    assert all(h.get("x-tenant") == "acme" for h in receiver.got.headers)
    # metrics: input and output token usage of the three requests, by token type
    last = receiver.got.metrics[-1]
    usage = {
        (a["gen_ai.token.type"], a["gen_ai.request.model"]): p["sum"]
        for a, p in last["gen_ai.client.token.usage"]["points"]
    }
    assert usage == {
        ("input", "tiny-a"): 7 + 9,
        ("output", "tiny-a"): 4 + 6,
        ("input", "tiny-b"): 8,
        ("output", "tiny-b"): 5,
    }
    assert last["gen_ai.client.operation.duration"]["unit"] == "s"
    # the GenAI conventions' bucket boundaries, in seconds and tokens (not the SDK's millisecond defaults)
    bounds = {
        name: {tuple(p["bounds"]) for _, p in last[name]["points"]}
        for name in (
            "gen_ai.client.token.usage",
            "gen_ai.client.operation.duration",
            "gen_ai.server.time_to_first_token",
            "gen_ai.server.time_per_output_token",
        )
    }
    assert bounds == {
        "gen_ai.client.token.usage": {
            (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
        },
        "gen_ai.client.operation.duration": {
            (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
        },
        "gen_ai.server.time_to_first_token": {
            (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
        },
        "gen_ai.server.time_per_output_token": {
            (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
        },
    }
    assert {tuple(a.items()): v for a, v in last["evostream.risk.alerts"]["points"]} == {
        (("evostream.alert.severity", "INFO"), ("gen_ai.request.model", "tiny-a")): 1,
        (("evostream.alert.severity", "WARNING"), ("gen_ai.request.model", "tiny-b")): 1,
        (("evostream.alert.severity", "CRITICAL"), ("gen_ai.request.model", "tiny-a")): 1,
    }


def test_an_early_report_marks_its_flagged_step(receiver: Receiver, tmp_path: Path) -> None:
    receiver.got = Received()
    recs = sample_records(("evo.risk",), per_topic=2)
    early = {**recs[1].value, "stage": "EARLY", "step": 3}
    sink = OtlpSink(SinkContext("otlp", tmp_path, {"endpoint": endpoint(receiver, "grpc")}))
    try:
        assert sink.write(records("evo.risk", [early], first_offset=9)).status is Status.OK
    finally:
        sink.close()
    (span,) = receiver.got.spans
    assert span.events == [
        ("evostream.risk.flagged_step", {"evostream.risk.flag": "high_entropy", "evostream.risk.step": 3}),
        ("evostream.risk.flagged_step", {"evostream.risk.flag": "low_margin", "evostream.risk.step": 3}),
    ]


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
    from evostream.core.stack.ports import free_port

    for protocol, url in (("grpc", f"127.0.0.1:{free_port()}"), ("http/protobuf", f"http://127.0.0.1:{free_port()}")):
        sink = OtlpSink(SinkContext("otlp", tmp_path, {"protocol": protocol, "endpoint": url, "timeout_s": "1"}))
        try:
            out = sink.write(sample_records(sink.topics, per_topic=1))
        finally:
            sink.close()
        assert out.status is Status.RETRYABLE and url.split("//")[-1] in out.reason, out


def test_a_failed_request_is_an_error_span_with_a_bounded_error_type(receiver: Receiver, tmp_path: Path) -> None:
    receiver.got = Received()
    failed = {
        **completion(4, T0_US),
        "finish_reason": "ERROR",
        "error": "CUDA out of memory at step 3",
        "token_count": 0,
    }
    sink = OtlpSink(SinkContext("otlp", tmp_path, {"endpoint": endpoint(receiver, "grpc")}))
    try:
        assert sink.write(records(COMPLETIONS, [failed])).status is Status.OK
    finally:
        sink.close()  # flushes the metrics
    (span,) = receiver.got.spans
    assert span.status_code == 2 and span.attributes["error.type"] == "_OTHER"  # STATUS_CODE_ERROR
    assert span.attributes["gen_ai.response.finish_reasons"] == ["error"]
    (metrics,) = receiver.got.metrics
    ((attrs, point),) = metrics["gen_ai.client.operation.duration"]["points"]
    assert attrs["error.type"] == "_OTHER" and point["count"] == 1
    assert "gen_ai.server.time_to_first_token" not in metrics  # no token came, no time to first token


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_a_key_is_not_sent_in_plain_text_unless_said_insecure(
    receiver: Receiver, tmp_path: Path, protocol: str
) -> None:
    keyed = {"protocol": protocol, "endpoint": endpoint(receiver, protocol), "headers": "api-key=s3cret"}
    with pytest.raises(SinkConfigError, match=r"'api-key' carries a key.*plain text"):
        OtlpSink(SinkContext("otlp", tmp_path, keyed))
    (tmp_path / "headers").write_text("x-vendor=s3cret\n")
    from_file = {
        "protocol": protocol,
        "endpoint": endpoint(receiver, protocol),
        "headers_file": str(tmp_path / "headers"),
    }
    with pytest.raises(SinkConfigError, match="carries a key"):
        OtlpSink(SinkContext("otlp", tmp_path, from_file))
    OtlpSink(SinkContext("otlp", tmp_path, {**keyed, "insecure": "true"})).close()  # said, so allowed


def test_a_key_on_the_command_line_is_refused_where_ps_would_show_it(receiver: Receiver, tmp_path: Path) -> None:
    ctx = SinkContext.from_env("otlp", tmp_path, {"headers": "authorization=Bearer s3cret", "tls": "true"})
    with pytest.raises(SinkConfigError, match="ps"):
        OtlpSink(ctx)


def test_a_key_travels_over_tls_to_a_grpc_receiver(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    tls_receiver = Receiver(tls=(key.read_bytes(), cert.read_bytes()))
    (tmp_path / "headers").write_text("authorization=Bearer s3cret\n")
    options = {
        "endpoint": f"localhost:{tls_receiver.grpc_port}",
        "tls": "true",
        "ca_file": str(cert),
        "headers_file": str(tmp_path / "headers"),
    }
    sink = OtlpSink(SinkContext("otlp", tmp_path, options))
    try:
        assert sink.write(sample_records(sink.topics, per_topic=2)).status is Status.OK
        assert tls_receiver.got.spans
        assert all(h.get("authorization") == "Bearer s3cret" for h in tls_receiver.got.headers)
    finally:
        sink.close()
        tls_receiver.stop()
