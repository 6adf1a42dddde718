"""The API's own settings: what ``evostream api``'s flags set, beside the project's ``Settings``."""

from __future__ import annotations

from dataclasses import dataclass, field

from evostream.core.settings import Settings


@dataclass
class ApiConfig:
    bootstrap: str
    settings: Settings
    open_reads: bool = False
    """Reads from other machines without a key (they are open to this machine's clients anyway)."""
    cors_origins: list[str] = field(default_factory=list)
    """Origins allowed to call from a browser page of theirs; none by default (CORS off)."""
    max_body_bytes: int = 64 * 1024
    history_s: float = 3600.0
    """How far back the live views start when the API starts."""
    allowed_hosts: list[str] | None = None
    """Host headers accepted (None: any). ``evostream api`` bound to loopback accepts only loopback names, so a web
    page of another site cannot reach it through DNS rebinding."""
    max_streams: int = 64
    """Server-sent event streams open at once; more get 503."""
