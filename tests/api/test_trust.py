"""Where requests may come from: the Host names of a bound address, the origins, writes from other sites' pages, and
listening off loopback only with TLS (or said to be insecure)."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest

from evostream.api.app import create_app
from evostream.api.config import ApiConfig
from evostream.api.server import server_config
from evostream.api.trust import (
    LOOPBACK_NAMES,
    TrustConfigError,
    allowed_hosts_for,
    check_binding,
    check_origins,
    cross_site_write,
)
from evostream.core.settings import load_settings
from tests.api.conftest import free_port
from tests.tls import self_signed


def test_the_host_names_of_a_bound_address() -> None:
    assert allowed_hosts_for("127.0.0.1") == list(LOOPBACK_NAMES)
    assert allowed_hosts_for("10.0.0.5", ["api.example"]) == ["10.0.0.5", "api.example"]
    assert allowed_hosts_for("::", ["api.example"]) == ["api.example"]
    with pytest.raises(TrustConfigError, match="--allowed-host"):
        allowed_hosts_for("0.0.0.0")
    with pytest.raises(TrustConfigError, match="DNS rebinding"):
        allowed_hosts_for("0.0.0.0", ["*"])


def test_origins_are_named_never_a_wildcard() -> None:
    assert check_origins(["https://dash.example/"]) == ["https://dash.example"]
    for bad in ("*", "https://*.example", "dash.example", "https://dash.example/path"):
        with pytest.raises(TrustConfigError):
            check_origins([bad])


def test_listening_off_loopback_needs_tls_or_insecure() -> None:
    check_binding("127.0.0.1", tls=False, insecure=False)
    check_binding("10.0.0.5", tls=True, insecure=False)
    check_binding("0.0.0.0", tls=False, insecure=True)
    with pytest.raises(TrustConfigError, match="without TLS"):
        check_binding("0.0.0.0", tls=False, insecure=False)


def scope(method: str, **headers: str) -> dict[str, object]:
    raw = [(k.replace("_", "-").lower().encode(), v.encode()) for k, v in headers.items()]
    return {"type": "http", "method": method, "headers": raw}


def test_a_write_from_another_sites_page_is_named_and_reads_and_same_origin_pass() -> None:
    assert cross_site_write(scope("POST", sec_fetch_site="cross-site"), []) is not None
    assert cross_site_write(scope("POST", origin="https://evil.example", host="127.0.0.1:8000"), []) is not None
    assert cross_site_write(scope("POST", origin="null"), []) is not None
    assert cross_site_write(scope("GET", sec_fetch_site="cross-site"), []) is None
    assert cross_site_write(scope("POST", origin="http://127.0.0.1:8000", host="127.0.0.1:8000"), []) is None
    assert cross_site_write(scope("POST"), []) is None  # curl: no browser, no page
    allowed = ["https://dash.example"]
    assert cross_site_write(scope("POST", sec_fetch_site="cross-site", origin="https://dash.example"), allowed) is None


def test_the_api_serves_https_with_a_certificate(tmp_path: Path) -> None:
    import threading
    import time

    import uvicorn

    cert, key = self_signed(tmp_path)
    settings = load_settings(bootstrap_servers="127.0.0.1:1", governance_dir=tmp_path)
    app = create_app(ApiConfig("127.0.0.1:1", settings, trust_loopback=True), tail=False)
    port = free_port()
    server = uvicorn.Server(server_config(app, "127.0.0.1", port, tls_cert=cert, tls_key=key, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            assert thread.is_alive()
            time.sleep(0.05)
        trusted = ssl.create_default_context(cafile=str(cert))
        assert httpx.get(f"https://127.0.0.1:{port}/traces", verify=trusted, timeout=10).status_code == 200
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/traces", timeout=5)  # no plain HTTP on that port
    finally:
        server.should_exit = True
        thread.join(30)
