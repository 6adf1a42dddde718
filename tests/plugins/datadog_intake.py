"""A local stand-in for Datadog's intake (a paid service): it checks the exact requests the official client sends
(method, path, API key header, gzip, JSON shape, metric types, the timestamp window, the payload limits), keeps
what it accepted, and answers as Datadog does (202), or with a given status when told to."""

from __future__ import annotations

import gzip
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from evostream.plugins.datadog import MAX_COMPRESSED, MAX_RAW

KEY = "test-api-key-0123456789"


class Intake:
    """A local stand-in for api.datadoghq.com that records what it accepted and fails what it checks."""

    def __init__(self) -> None:
        self.series: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.violations: list[str] = []
        self.payloads: list[tuple[int, int]] = []
        """(compressed, raw) bytes of each series payload."""
        self.fail: list[int] = []
        self._counted: set[tuple[str, tuple[str, ...], int]] = set()
        """(metric, tags, second) of every count point accepted: Datadog keeps the last value of a series' second,
        so a second count there would replace the first."""
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def reset(self) -> None:
        self.series, self.events, self.violations, self.payloads, self.fail = [], [], [], [], []
        self._counted = set()

    def _check(self, ok: bool, what: str) -> None:
        if not ok:
            self.violations.append(what)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        intake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                check = intake._check
                check(self.headers.get("DD-API-KEY") == KEY, f"{self.path}: DD-API-KEY header missing or wrong")
                check(self.headers.get("Content-Type") == "application/json", f"{self.path}: not JSON")
                if intake.fail:
                    status = intake.fail.pop()
                    return self._reply(status, {"errors": [f"test intake answers {status}"]})
                if self.path == "/api/v2/series":
                    check(self.headers.get("Content-Encoding") == "gzip", "series not gzip-encoded")
                    body = gzip.decompress(raw)
                    intake.payloads.append((len(raw), len(body)))
                    if len(raw) > MAX_COMPRESSED or len(body) > MAX_RAW:
                        return self._reply(413, {"errors": ["Payload too large"]})
                    series = json.loads(body)["series"]
                    now = time.time()
                    for s in series:
                        check(set(s) <= {"metric", "type", "points", "tags", "interval", "unit", "resources"}, str(s))
                        check(s["metric"].startswith("evostream."), f"metric name {s['metric']}")
                        check(s["type"] in (1, 3), f"{s['metric']}: type {s['type']} is not COUNT (1) or GAUGE (3)")
                        check(all(not t.startswith("trace") for t in s["tags"]), f"{s['metric']}: a per-trace tag")
                        for p in s["points"]:
                            check(isinstance(p["timestamp"], int), "timestamp is not an integer of seconds")
                            check(now - 3600 <= p["timestamp"] <= now + 600, f"{p['timestamp']} out of window")
                            if s["type"] == 1:
                                at = (s["metric"], tuple(s["tags"]), p["timestamp"])
                                check(at not in intake._counted, f"a second count for {at}: Datadog keeps the last")
                                intake._counted.add(at)
                    intake.series += series
                    return self._reply(202, {"errors": []})
                if self.path == "/api/v1/events":
                    event = json.loads(raw)
                    check({"title", "text"} <= set(event) and len(event["text"]) <= 4000, f"event {event}")
                    check(event.get("source_type_name") == "evostream", "event source")
                    intake.events.append(event)
                    return self._reply(202, {"status": "ok", "event": {"id": len(intake.events)}})
                return self._reply(404, {"errors": ["no such path"]})

            def _reply(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        return Handler

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)
