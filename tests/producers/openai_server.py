"""A real HTTP server speaking the OpenAI wire format (``/v1/models``, ``/v1/completions``) for the tests of HTTP
reference targets: it records each request body and answers as its ``Backend`` says."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Backend:
    """What the test's OpenAI-compatible server does: its models, its answer, a delay, a status; what it was sent."""

    models: list[str] = field(default_factory=lambda: ["big-model"])
    text: str = "the reference's answer"
    delay_s: float = 0.0
    status: int = 200
    bodies: list[dict[str, Any]] = field(default_factory=list)
    echo: bool = False
    """Answer each prompt with ``answer to <prompt>`` instead of ``text``."""
    garbage: bytes | None = None
    """Answer ``/v1/completions`` with HTTP 200 and these bytes as the body instead of a well-formed answer."""
    in_flight: int = 0
    most_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


@contextmanager
def openai_server() -> Iterator[tuple[str, Backend]]:
    """The server on a free port: its base URL (``http://127.0.0.1:<port>/v1``) and its Backend."""
    backend = Backend()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, payload: Any) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path != "/v1/models":
                self._send(404, {"error": {"message": f"no route {self.path}"}})
                return
            self._send(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in backend.models]})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            backend.bodies.append(body)
            if self.path != "/v1/completions":
                self._send(404, {"error": {"message": f"no route {self.path}"}})
                return
            with backend.lock:
                backend.in_flight += 1
                backend.most_in_flight = max(backend.most_in_flight, backend.in_flight)
            time.sleep(backend.delay_s)
            with backend.lock:
                backend.in_flight -= 1
            if backend.status != 200:
                self._send(backend.status, {"error": {"message": "the model is overloaded"}})
                return
            if backend.garbage is not None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(backend.garbage)))
                self.end_headers()
                self.wfile.write(backend.garbage)
                return
            self._send(
                200,
                {
                    "id": "cmpl-1",
                    "object": "text_completion",
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "text": f"answer to {body['prompt']}" if backend.echo else backend.text,
                            "finish_reason": "length",
                            "logprobs": None,
                        }
                    ],
                    "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12},
                },
            )

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", backend
    finally:
        httpd.shutdown()
        httpd.server_close()
