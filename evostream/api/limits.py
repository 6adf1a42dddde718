"""A limit on request bodies, enforced before any endpoint reads them: a declared Content-Length over the limit is
refused at once (413), and a body sent without one (chunked) is counted as it arrives and refused once over."""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimit:
    """ASGI middleware: bodies of at most ``max_bytes``."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send, f"the request body has {int(declared):,} bytes; the limit is {self.max_bytes:,}")
            return
        seen = 0
        refused = started = False

        async def counted() -> Message:
            nonlocal seen, refused
            msg = await receive()
            if msg["type"] == "http.request" and not refused:
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    refused = True
                    if not started:
                        await self._refuse(send, f"the request body is over the limit of {self.max_bytes:,} bytes")
                    return {"type": "http.disconnect"}  # the endpoint stops reading; its answer is dropped
            return msg

        async def guarded(msg: Message) -> None:
            nonlocal started
            if refused:
                return  # the 413 went out instead
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        await self.app(scope, counted, guarded)

    @staticmethod
    async def _refuse(send: Send, detail: str) -> None:
        body = json.dumps({"error": "TooLargeError", "detail": detail}).encode()
        headers: list[Any] = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
