"""A real OTLP receiver for the tests, on the opentelemetry-proto service definitions: gRPC (TraceService and
MetricsService) and HTTP/protobuf (POST /v1/traces, /v1/metrics, gzip or not). It keeps what it was sent, and can be
told to refuse the next requests with a given status, as a collector that is overloaded or that rejects data does."""

from __future__ import annotations

import gzip
import threading
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

HTTP_OF = {grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.INVALID_ARGUMENT: 400}


def any_value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind) if kind else None


@dataclass
class Span:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]
    status_code: int
    resource: dict[str, Any]


@dataclass
class Received:
    spans: list[Span] = field(default_factory=list)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    """Per export: metric name -> its data points (attributes and value or count/sum)."""
    headers: list[dict[str, str]] = field(default_factory=list)
    refused: int = 0


class Receiver:
    """Both protocols on free ports of 127.0.0.1; ``fail_next(n, code)`` refuses the next ``n`` requests."""

    def __init__(self, tls: tuple[bytes, bytes] | None = None) -> None:
        """``tls``: (private key, certificate) PEM: gRPC over TLS (HTTP stays plain)."""
        self.got = Received()
        self._lock = threading.Lock()
        self._fail: list[grpc.StatusCode] = []
        self.grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Traces(self), self.grpc)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_Metrics(self), self.grpc)
        if tls is None:
            self.grpc_port = self.grpc.add_insecure_port("127.0.0.1:0")
        else:
            self.grpc_port = self.grpc.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([tls]))
        self.grpc.start()
        self.http = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.http_port = self.http.server_address[1]
        self._thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self._thread.start()

    def fail_next(self, n: int, code: grpc.StatusCode) -> None:
        with self._lock:
            self._fail = [code] * n

    def _refusal(self) -> grpc.StatusCode | None:
        with self._lock:
            if self._fail:
                self.got.refused += 1
                return self._fail.pop()
            return None

    def take_traces(self, req: trace_service_pb2.ExportTraceServiceRequest, headers: dict[str, str]) -> None:
        with self._lock:
            self.got.headers.append(headers)
            for rs in req.resource_spans:
                resource = {kv.key: any_value(kv.value) for kv in rs.resource.attributes}
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        self.got.spans.append(
                            Span(
                                s.trace_id.hex(),
                                s.span_id.hex(),
                                s.parent_span_id.hex(),
                                s.name,
                                s.kind,
                                s.start_time_unix_nano,
                                s.end_time_unix_nano,
                                {kv.key: any_value(kv.value) for kv in s.attributes},
                                [(e.name, {kv.key: any_value(kv.value) for kv in e.attributes}) for e in s.events],
                                s.status.code,
                                resource,
                            )
                        )

    def take_metrics(self, req: metrics_service_pb2.ExportMetricsServiceRequest) -> None:
        export: dict[str, Any] = {}
        for rm in req.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    kind = m.WhichOneof("data")
                    points = []
                    for p in getattr(m, kind).data_points:
                        attrs = {kv.key: any_value(kv.value) for kv in p.attributes}
                        if kind == "histogram":
                            points.append((attrs, {"count": p.count, "sum": p.sum, "bounds": list(p.explicit_bounds)}))
                        else:
                            points.append((attrs, p.as_double if p.WhichOneof("value") == "as_double" else p.as_int))
                    export[m.name] = {"kind": kind, "unit": m.unit, "points": points}
        with self._lock:
            self.got.metrics.append(export)

    def stop(self) -> None:
        self.grpc.stop(grace=None).wait()
        self.http.shutdown()
        self.http.server_close()
        self._thread.join(10)


class _Traces(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]  # generated, untyped
    def __init__(self, receiver: Receiver) -> None:
        self.r = receiver

    def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 (the generated service's name)
        code = self.r._refusal()
        if code is not None:
            context.abort(code, f"refused by the test receiver ({code.name})")
        self.r.take_traces(request, {k: v for k, v in context.invocation_metadata()})
        return trace_service_pb2.ExportTraceServiceResponse()


class _Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):  # type: ignore[misc]
    def __init__(self, receiver: Receiver) -> None:
        self.r = receiver

    def Export(self, request: Any, context: Any) -> Any:  # noqa: N802
        self.r.take_metrics(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()


def _handler(r: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path == "/v1/traces":
                code = r._refusal()
                if code is not None:
                    return self._reply(HTTP_OF.get(code, 500), b"refused by the test receiver")
                r.take_traces(
                    trace_service_pb2.ExportTraceServiceRequest.FromString(body),
                    {k.lower(): v for k, v in self.headers.items()},
                )
                return self._reply(200, trace_service_pb2.ExportTraceServiceResponse().SerializeToString())
            if self.path == "/v1/metrics":
                r.take_metrics(metrics_service_pb2.ExportMetricsServiceRequest.FromString(body))
                return self._reply(200, metrics_service_pb2.ExportMetricsServiceResponse().SerializeToString())
            return self._reply(404, b"no such path")

        def _reply(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    return Handler
