"""The API's own settings: what ``evostream api``'s flags set, beside the project's ``Settings``."""

from __future__ import annotations

from dataclasses import dataclass, field

from evostream.api.trust import LOOPBACK_NAMES, TrustConfigError, check_origins
from evostream.core.settings import Settings


@dataclass
class ApiConfig:
    bootstrap: str
    settings: Settings
    open_reads: bool = False
    """Reads without a key, from anywhere (``--open-reads``)."""
    trust_loopback: bool = False
    """Reads and ``/infer`` without a key from loopback peers (``--trust-loopback``). Off by default: behind a proxy
    on this machine every client is a loopback peer."""
    cors_origins: list[str] = field(default_factory=list)
    """Origins allowed to call from a browser page of theirs; none by default (CORS off); never ``*``."""
    max_body_bytes: int = 64 * 1024
    history_s: float = 3600.0
    """How far back the live views start when the API starts."""
    allowed_hosts: list[str] = field(default_factory=lambda: list(LOOPBACK_NAMES))
    """Host headers accepted, always checked (``trust.allowed_hosts_for`` makes the list of a bound address), so a
    web page of another site cannot reach the API through DNS rebinding."""
    max_streams: int = 64
    """Server-sent event streams open at once; more get 503."""
    infer_in_flight: int = 8
    """``/infer`` requests one client may have waiting at once; more get 429."""
    infer_per_s: float = 5.0
    """``/infer`` requests one client may start per second, on average (bursts of ``infer_in_flight``)."""
    governance_reads_per_s: float = 5.0
    """Reads of the governance log (registry, audit, provenance) one client may make per second (bursts of 20)."""

    def __post_init__(self) -> None:
        self.cors_origins = check_origins(self.cors_origins)
        if not self.allowed_hosts or "*" in self.allowed_hosts:
            raise TrustConfigError("the API needs the Host names it serves ('*' would accept any: DNS rebinding)")
