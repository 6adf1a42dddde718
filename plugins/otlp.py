"""The OTLP sink: spans and metrics to an OpenTelemetry collector (or any OTLP receiver), over gRPC or HTTP/protobuf.

Spans, by the OpenTelemetry GenAI semantic conventions (the attribute names are written out below as plain strings:
the Python package holding them marks them deprecated while they move to the GenAI conventions repository):

- one span per request, from its Completion: ``text_completion <model version>``, kind SERVER, from the request's
  arrival to its last token, with ``gen_ai.operation.name``, ``gen_ai.provider.name`` (``evostream``),
  ``gen_ai.request.model``, ``gen_ai.response.model``, ``gen_ai.response.id``, ``gen_ai.usage.input_tokens``,
  ``gen_ai.usage.output_tokens``, ``gen_ai.response.finish_reasons``, and ``evostream.*`` extras (tenant, timings);
- a child span per RiskReport (``evaluate_risk``, EARLY and FINAL) with ``evostream.risk.*`` attributes and a span
  event for each flagged step (the EARLY report's step, the FINAL report's flags); a child span per RiskAlert;
- with option ``steps=all``, a child span per generation step (token, entropy, surprisal, margin, latency).

Why children rather than events on the request span: a span cannot change once exported, and the runner commits
after every flush, so holding a request's span back until its risk report arrives from another topic would lose it
in a crash. Trace and span ids are derived from the evostream trace id and the record, so a redelivered record
produces the same span (a receiver keeps one per span id), and the sink remembers the keys it exported.

Metrics (cumulative, exported at each flush): ``gen_ai.client.token.usage`` (by ``gen_ai.token.type``),
``gen_ai.client.operation.duration``, ``gen_ai.server.time_to_first_token``, ``gen_ai.server.time_per_output_token``
(seconds), and ``evostream.risk.alerts`` by severity.

Errors follow the OTLP specification: gRPC UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, CANCELLED,
OUT_OF_RANGE, DATA_LOSS and HTTP 429, 502, 503, 504 or no connection are retryable; anything else the receiver
refused is permanent, and the batch it was part of is dead-lettered.

Options: ``protocol`` (``grpc``, default, or ``http/protobuf``), ``endpoint`` (default ``127.0.0.1:4317`` for gRPC,
``http://127.0.0.1:4318`` for HTTP; ``https://`` means TLS), ``tls`` (``true`` for gRPC over TLS), ``ca_file`` (a
PEM of the receiver's CA, else the system's), ``headers`` (``k=v,k2=v2``), ``headers_file`` (a file of
``k=v`` lines: headers that carry a key, kept out of ``ps``), ``insecure`` (``true`` lets a key travel in plain
text), ``timeout_s`` (default 10), ``steps`` (``flagged``, default, or ``all``), ``service_name`` (default
``evostream``).

A header whose name says it carries a key (``authorization``, ``api-key``, ``x-honeycomb-team``...: see
``SECRET_HEADER``), or any header from ``headers_file``, is sent only over TLS unless ``insecure=true``; such a
header given with ``--option`` on the command line is refused (``ps`` shows it): set it in the environment
(``EVOSTREAM_SINK_OTLP_HEADERS``) or in ``headers_file``."""

from __future__ import annotations

import gzip
import hashlib
import logging
import re
import ssl
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import Message
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.status import Status as SpanStatus
from opentelemetry.trace.status import StatusCode

from evostream.core.errors import SinkConfigError
from evostream.plugins.api import Record, Result, Sink, SinkContext
from evostream.schemas.catalog import ALERTS, COMPLETIONS, RISK, STEPS

# GenAI semantic conventions (https://opentelemetry.io/docs/specs/semconv/gen-ai/)
GEN_AI_OPERATION_NAME = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
GEN_AI_RESPONSE_ID = "gen_ai.response.id"
GEN_AI_USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
GEN_AI_TOKEN_TYPE = "gen_ai.token.type"
ERROR_TYPE = "error.type"
OPERATION = "text_completion"
PROVIDER = "evostream"
OTHER_ERROR = "_OTHER"  # error.type when no low-cardinality error class is known (the conventions' fallback)

RETRYABLE_GRPC = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.DATA_LOSS,
}
RETRYABLE_HTTP = {429, 502, 503, 504}
# the explicit bucket boundaries the GenAI metric conventions give (the SDK's defaults are for milliseconds)
TOKEN_BUCKETS = [4.0**i for i in range(14)]  # 1, 4, 16 ... 67108864 tokens
DURATION_BUCKETS = [0.01 * 2**i for i in range(14)]  # 0.01, 0.02, 0.04 ... 81.92 s
TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0]
TPOT_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5]
log = logging.getLogger("evostream.sinks.otlp")
SCOPE = InstrumentationScope("evostream.sinks.otlp", "1")


class ExportRefusedError(Exception):
    """The receiver refused a request; ``retryable`` says whether sending it again may work."""

    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


SECRET_HEADER = re.compile(r"auth|key|token|secret|passw|team|credential|signature", re.IGNORECASE)
"""Header names that carry a vendor's key (``authorization``, ``api-key``, ``dd-api-key``, ``x-honeycomb-team``...)."""


def parse_headers(text: str, sink: str) -> dict[str, str]:
    """``k=v,k2=v2`` (or one pair a line, as a headers file holds them) as headers, names lower case."""
    headers = {}
    for item in filter(None, (part.strip() for part in re.split(r"[,\n]", text))):
        k, eq, v = item.partition("=")
        if not eq:
            raise SinkConfigError(f"sink {sink!r}: headers are k=v pairs separated by commas, got {item!r}")
        headers[k.strip().lower()] = v.strip()
    return headers


def tls_of(endpoint: str, tls_option: str | None, protocol: str) -> bool:
    """Whether the export is encrypted: an ``https://`` endpoint, or gRPC with ``tls=true``."""
    if endpoint.startswith("https://"):
        return True
    if endpoint.startswith("http://") or protocol != "grpc":
        return False
    return (tls_option or "false").lower() in ("1", "true", "yes")


class Transport:
    """Sends OTLP export requests and classifies what the receiver answered; gRPC over TLS when ``tls`` (the
    system's roots, or ``ca`` PEM bytes)."""

    def __init__(
        self,
        protocol: str,
        endpoint: str,
        headers: Mapping[str, str],
        timeout_s: float,
        tls: bool = False,
        ca: bytes | None = None,
    ) -> None:
        self.protocol, self.endpoint, self.headers, self.timeout_s = protocol, endpoint, dict(headers), timeout_s
        self._channel: grpc.Channel | None = None
        self._context = ssl.create_default_context(cadata=ca.decode()) if ca and protocol != "grpc" else None
        if protocol == "grpc":
            target = endpoint.removeprefix("https://").removeprefix("http://")
            if tls:
                self._channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=ca))
            else:
                self._channel = grpc.insecure_channel(target)
            self._traces = trace_service_pb2_grpc.TraceServiceStub(self._channel)
            self._metrics = metrics_service_pb2_grpc.MetricsServiceStub(self._channel)

    def send(self, signal: str, request: Message) -> None:
        if self._channel is not None:
            stub = self._traces if signal == "traces" else self._metrics
            try:
                stub.Export(request, timeout=self.timeout_s, metadata=tuple(self.headers.items()))
            except grpc.RpcError as e:
                code = e.code()
                raise ExportRefusedError(
                    f"OTLP gRPC {signal} to {self.endpoint}: {code.name}: {e.details()}", code in RETRYABLE_GRPC
                ) from e
            return
        url = f"{self.endpoint.rstrip('/')}/v1/{signal}"
        body = gzip.compress(request.SerializeToString())
        req = urllib.request.Request(
            url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip", **self.headers},
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s, context=self._context) as reply:
                reply.read()
        except urllib.error.HTTPError as e:
            retryable = e.code in RETRYABLE_HTTP
            raise ExportRefusedError(f"OTLP HTTP {signal} to {url}: {e.code} {e.reason}", retryable) from e
        except OSError as e:  # refused, reset, timed out
            raise ExportRefusedError(f"OTLP HTTP {signal} to {url}: {e}", True) from e

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()


def _id(*parts: str, size: int) -> int:
    """A nonzero id of ``size`` bytes derived from ``parts``: the same record always gives the same span."""
    value = int.from_bytes(hashlib.sha256("\x1f".join(parts).encode()).digest()[:size], "big")
    return value or 1


def trace_id_of(evostream_trace: str) -> int:
    return _id("trace", evostream_trace, size=16)


def request_span_id(evostream_trace: str) -> int:
    return _id("request", evostream_trace, size=8)


class OtlpSink(Sink):
    topics: tuple[str, ...] = (COMPLETIONS, RISK, ALERTS)

    def __init__(self, ctx: SinkContext) -> None:
        super().__init__(ctx)
        protocol = (ctx.option("protocol", "grpc") or "grpc").lower()
        if protocol not in ("grpc", "http/protobuf"):
            raise SinkConfigError(f"sink {self.name!r}: protocol must be grpc or http/protobuf, got {protocol!r}")
        default = "127.0.0.1:4317" if protocol == "grpc" else "http://127.0.0.1:4318"
        endpoint = ctx.option("endpoint", default) or default
        if protocol == "http/protobuf" and not endpoint.startswith(("http://", "https://")):
            raise SinkConfigError(f"sink {self.name!r}: an http/protobuf endpoint is a URL, got {endpoint!r}")
        steps = ctx.option("steps", "flagged") or "flagged"
        if steps not in ("flagged", "all"):
            raise SinkConfigError(f"sink {self.name!r}: steps must be flagged or all, got {steps!r}")
        if steps == "all":
            self.topics = (*OtlpSink.topics, STEPS)
        given = parse_headers(ctx.option("headers", "") or "", self.name)
        if "headers" in ctx.on_command_line and any(SECRET_HEADER.search(k) for k in given):
            ctx.secret("headers")  # refuses: a key on the command line shows in `ps`
        from_file = ""
        if ctx.option("headers_file"):
            try:
                from_file = Path(ctx.option("headers_file") or "").expanduser().read_text()
            except OSError as e:
                raise SinkConfigError(f"sink {self.name!r}: cannot read headers_file: {e}") from e
        headers = {**given, **parse_headers(from_file, self.name)}
        secret = sorted(k for k in headers if SECRET_HEADER.search(k) or k not in given)
        tls = tls_of(endpoint, ctx.option("tls"), protocol)
        insecure = (ctx.option("insecure", "false") or "false").lower() in ("1", "true", "yes")
        if secret and not tls and not insecure:
            raise SinkConfigError(
                f"sink {self.name!r}: the header {secret[0]!r} carries a key, and {endpoint} is plain text: use TLS "
                "(an https:// endpoint, or tls=true for gRPC), or say insecure=true"
            )
        ca = None
        if ctx.option("ca_file"):
            try:
                ca = Path(ctx.option("ca_file") or "").expanduser().read_bytes()
            except OSError as e:
                raise SinkConfigError(f"sink {self.name!r}: cannot read ca_file: {e}") from e
        timeout = ctx.number("timeout_s", 10.0)
        if timeout <= 0:
            raise SinkConfigError(f"sink {self.name!r}: timeout_s must be positive")
        self.transport = Transport(protocol, endpoint, headers, timeout, tls=tls, ca=ca)
        self.resource = Resource.create({"service.name": ctx.option("service_name", "evostream") or "evostream"})
        self.reader = InMemoryMetricReader()
        self.meters = MeterProvider(metric_readers=[self.reader], resource=self.resource)
        meter = self.meters.get_meter("evostream.sinks.otlp")
        self.token_usage = meter.create_histogram(
            "gen_ai.client.token.usage",
            "{token}",
            "Tokens used per request.",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
        )
        self.duration = meter.create_histogram(
            "gen_ai.client.operation.duration",
            "s",
            "Request duration.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.ttft = meter.create_histogram(
            "gen_ai.server.time_to_first_token",
            "s",
            "Queue + prefill time.",
            explicit_bucket_boundaries_advisory=TTFT_BUCKETS,
        )
        self.tpot = meter.create_histogram(
            "gen_ai.server.time_per_output_token",
            "s",
            "Decode time per token.",
            explicit_bucket_boundaries_advisory=TPOT_BUCKETS,
        )
        self.alerts = meter.create_counter("evostream.risk.alerts", "{alert}", "Risk alerts.")
        self._sent: OrderedDict[str, None] = OrderedDict()
        self.remember = int(ctx.number("remember", 100_000))

    # -- spans ----------------------------------------------------------------------------------------------------

    def _span(
        self,
        name: str,
        trace: str,
        span_id: int,
        parent: int | None,
        start_ns: int,
        end_ns: int,
        attributes: Mapping[str, Any],
        kind: SpanKind = SpanKind.INTERNAL,
        events: Sequence[Event] = (),
        error: str | None = None,
    ) -> ReadableSpan:
        tid = trace_id_of(trace)
        flags = TraceFlags(TraceFlags.SAMPLED)
        return ReadableSpan(
            name,
            context=SpanContext(tid, span_id, is_remote=False, trace_flags=flags),
            parent=SpanContext(tid, parent, is_remote=False, trace_flags=flags) if parent is not None else None,
            resource=self.resource,
            attributes=dict(attributes),
            events=events,
            kind=kind,
            status=SpanStatus(StatusCode.ERROR, error) if error else SpanStatus(StatusCode.UNSET),
            start_time=start_ns,
            end_time=max(end_ns, start_ns),
            instrumentation_scope=SCOPE,
        )

    def _request(self, rec: Record) -> ReadableSpan:
        v, t = rec.value, rec.value["timings"]
        end = v["completed_at_us"] * 1000
        attrs = {
            GEN_AI_OPERATION_NAME: OPERATION,
            GEN_AI_PROVIDER_NAME: PROVIDER,
            GEN_AI_REQUEST_MODEL: v["model_version"],
            GEN_AI_RESPONSE_MODEL: v["model_version"],
            GEN_AI_RESPONSE_ID: v["request_id"],
            GEN_AI_USAGE_INPUT_TOKENS: v["prompt_token_count"],
            GEN_AI_USAGE_OUTPUT_TOKENS: v["token_count"],
            GEN_AI_RESPONSE_FINISH_REASONS: [v["finish_reason"].lower()],
            "evostream.trace_id": v["trace_id"],
            "evostream.tenant": v["tenant"],
            "evostream.queue_us": t["queue_us"],
            "evostream.prefill_us": t["prefill_us"],
            "evostream.decode_us": t["decode_us"],
            "evostream.record": rec.key,
        }
        if v["error"] is not None:  # the message is unbounded text: the span's status carries it, error.type does not
            attrs[ERROR_TYPE] = OTHER_ERROR
        return self._span(
            f"{OPERATION} {v['model_version']}",
            v["trace_id"],
            request_span_id(v["trace_id"]),
            None,
            end - t["total_us"] * 1000,
            end,
            attrs,
            SpanKind.SERVER,
            error=v["error"],
        )

    def _risk(self, rec: Record) -> ReadableSpan:
        v = rec.value
        at = v["produced_at_us"] * 1000
        events = []
        if v["flags"]:
            step_attrs = {"evostream.risk.step": v["step"]} if v["step"] is not None else {}
            events = [
                Event(
                    "evostream.risk.flagged_step" if v["stage"] == "EARLY" else "evostream.risk.flag",
                    {"evostream.risk.flag": f, **step_attrs},
                    at,
                )
                for f in v["flags"]
            ]
        attrs = {
            "evostream.risk.stage": v["stage"],
            "evostream.risk.score": v["score"],
            "evostream.risk.flags": v["flags"],
            "evostream.risk.blamed_layers": v["blamed_layers"],
            "evostream.risk.policy": v["policy"],
            "evostream.risk.steps": v["steps"],
            "evostream.record": rec.key,
        }
        return self._span(
            f"evaluate_risk {v['model_version']}",
            v["trace_id"],
            _id("risk", rec.key, size=8),
            request_span_id(v["trace_id"]),
            at,
            at,
            attrs,
            events=events,
        )

    def _alert(self, rec: Record) -> ReadableSpan:
        v = rec.value
        at = v["produced_at_us"] * 1000
        attrs = {
            "evostream.alert.severity": v["severity"],
            "evostream.risk.stage": v["stage"],
            "evostream.risk.score": v["score"],
            "evostream.risk.flags": v["flags"],
            "evostream.alert.reason": v["reason"],
            "evostream.record": rec.key,
        }
        event = Event("evostream.risk.alert", {"evostream.alert.severity": v["severity"]}, at)
        return self._span(
            f"risk_alert {v['severity'].lower()}",
            v["trace_id"],
            _id("alert", rec.key, size=8),
            request_span_id(v["trace_id"]),
            at,
            at,
            attrs,
            events=[event],
        )

    def _step(self, rec: Record) -> ReadableSpan:
        v = rec.value
        end = v["emitted_at_us"] * 1000
        attrs = {
            "evostream.step": v["step"],
            "evostream.token_id": v["token_id"],
            "evostream.entropy_bits": v["entropy_bits"],
            "evostream.surprisal_bits": v["surprisal_bits"],
            "evostream.top1_top2_margin": v["top1_top2_margin"],
            "evostream.record": rec.key,
        }
        return self._span(
            f"generate_token {v['step']}",
            v["trace_id"],
            _id("step", rec.key, size=8),
            request_span_id(v["trace_id"]),
            end - v["latency_us"] * 1000,
            end,
            attrs,
        )

    # -- the sink -------------------------------------------------------------------------------------------------

    def write(self, records: Sequence[Record]) -> Result:
        todo = [r for r in records if r.key not in self._sent]
        build = {COMPLETIONS: self._request, RISK: self._risk, ALERTS: self._alert, STEPS: self._step}
        spans = [build[r.topic](r) for r in todo]
        if spans:
            try:
                self.transport.send("traces", encode_spans(spans))
            except ExportRefusedError as e:
                return Result.retry(str(e)) if e.retryable else Result.failed(str(e), todo)
        for rec in todo:  # counted once the spans are accepted, so a retried batch is not counted twice
            self._measure(rec)
            self._sent[rec.key] = None
        while len(self._sent) > self.remember:
            self._sent.popitem(last=False)
        return Result.ok()

    def _measure(self, rec: Record) -> None:
        v = rec.value
        if rec.topic == ALERTS:
            self.alerts.add(1, {"evostream.alert.severity": v["severity"], GEN_AI_REQUEST_MODEL: v["model_version"]})
            return
        if rec.topic != COMPLETIONS:
            return
        base = {
            GEN_AI_OPERATION_NAME: OPERATION,
            GEN_AI_PROVIDER_NAME: PROVIDER,
            GEN_AI_REQUEST_MODEL: v["model_version"],
            GEN_AI_RESPONSE_MODEL: v["model_version"],
        }
        t = v["timings"]
        self.token_usage.record(v["prompt_token_count"], {**base, GEN_AI_TOKEN_TYPE: "input"})
        self.token_usage.record(v["token_count"], {**base, GEN_AI_TOKEN_TYPE: "output"})
        self.duration.record(t["total_us"] / 1e6, base if v["error"] is None else {**base, ERROR_TYPE: OTHER_ERROR})
        if v["error"] is None and v["token_count"] > 0:
            self.ttft.record((t["queue_us"] + t["prefill_us"]) / 1e6, base)
            if v["token_count"] > 1:
                self.tpot.record(t["decode_us"] / 1e6 / (v["token_count"] - 1), base)

    def flush(self) -> Result:
        data = self.reader.get_metrics_data()
        if data is None or not data.resource_metrics:
            return Result.ok()
        try:
            self.transport.send("metrics", encode_metrics(data))
        except ExportRefusedError as e:
            if e.retryable:
                return Result.retry(str(e))
            # cumulative metrics: the next export carries everything again, so a refused one loses nothing
            log.warning("metrics refused, they go with the next export: %s", e)
        return Result.ok()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.meters.shutdown()
            self.transport.close()
