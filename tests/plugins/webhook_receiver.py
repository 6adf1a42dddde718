"""A real HTTP receiver for the webhook sink's tests: it keeps every request it is sent (path, headers, JSON body),
and can be told to answer the next few with an error status."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Got:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class Receiver:
    url: str
    got: list[Got] = field(default_factory=list)
    fail_next: list[int] = field(default_factory=list)
    """Statuses to answer the next requests with, in order (then 200 again)."""
    lock: threading.Lock = field(default_factory=threading.Lock)


@contextmanager
def receiver() -> Iterator[Receiver]:
    box: list[Receiver] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            r = box[0]
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with r.lock:
                status = r.fail_next.pop(0) if r.fail_next else 200
                if status == 200:
                    r.got.append(Got(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    box.append(Receiver(f"http://127.0.0.1:{server.server_address[1]}"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield box[0]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
