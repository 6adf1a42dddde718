"""The API under abuse, served as ``evostream api`` serves it (uvicorn, its limits and protocol) on a free port: 200
event streams opened at once against the cap, slowloris connections, an ``/infer`` flood from one client, writes
from other sites' pages, a proxy on this machine, and ``*`` as a CORS origin.

The tests that need only a broker come first; the flood runs last, against the deployment's inference service.
Distinct clients are distinct loopback source addresses (127.0.0.2, 127.0.0.3: Linux routes all of 127/8)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from evostream.api.app import create_app
from evostream.api.config import ApiConfig
from evostream.api.server import ServeLimits
from evostream.api.state import ApiState
from evostream.api.trust import TrustConfigError
from evostream.consumers.governance.log import GovernanceLog
from evostream.consumers.governance.service import init
from evostream.core.settings import load_settings
from tests.api.conftest import HOSTS, Deployment, served


def config(kafka: str, tmp: Path, **kw: object) -> ApiConfig:
    settings = load_settings(bootstrap_servers=kafka, governance_dir=tmp / "gov", artifacts_dir=tmp / "art")
    return ApiConfig(kafka, settings, **{"allowed_hosts": HOSTS, "history_s": 0.0, **kw})  # type: ignore[arg-type]


@contextmanager
def api(cfg: ApiConfig, limits: ServeLimits | None = None, tail: bool = True) -> Iterator[tuple[str, ApiState]]:
    app: FastAPI = create_app(cfg, tail=tail)
    with served(app, limits) as url:
        yield url, app.state.api


def from_address(address: str, **kw: object) -> httpx.Client:
    """A client whose connections come from ``address`` (another loopback address is another client)."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), **kw)  # type: ignore[arg-type]


@pytest.mark.integration
def test_200_simultaneous_stream_opens_leave_at_most_the_cap_open(kafka: str, tmp_path: Path) -> None:
    cap = 5

    async def opens(url: str) -> list[int]:
        limits = httpx.Limits(max_connections=300, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            started = asyncio.Event()
            statuses: list[int] = []

            async def one() -> None:
                await started.wait()
                async with client.stream("GET", url + "/stream") as r:
                    statuses.append(r.status_code)
                    if r.status_code == 200:
                        await asyncio.sleep(3)  # held open while the others arrive

            tasks = [asyncio.create_task(one()) for _ in range(200)]
            await asyncio.sleep(0.2)
            started.set()
            await asyncio.gather(*tasks)
            return statuses

    with api(config(kafka, tmp_path, max_streams=cap, trust_loopback=True)) as (url, state):
        statuses = asyncio.run(opens(url))
        assert sorted(set(statuses)) == [200, 503], statuses
        assert statuses.count(200) <= cap, f"{statuses.count(200)} streams open against a cap of {cap}"
        deadline = time.monotonic() + 10
        while state.streams and time.monotonic() < deadline:
            time.sleep(0.1)
        assert state.streams == 0, "a closed stream kept its place"
        with httpx.stream("GET", url + "/stream", timeout=30) as r:  # the places came back
            assert r.status_code == 200


SLOW_BODY = b"POST /infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n"


@pytest.mark.parametrize(
    ("at_once", "drip"),
    [
        (b"", b"GET /traces HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100),
        (SLOW_BODY, b'{"prompt": "' + b"a" * 100),
    ],
    ids=["slow head", "slow body"],
)
def test_a_slowloris_connection_is_closed_and_others_are_still_served(
    tmp_path: Path, at_once: bytes, drip: bytes
) -> None:
    """A head, or after a whole head a body, sent a byte at a time: closed at the deadline either way."""
    cfg = config("127.0.0.1:1", tmp_path, trust_loopback=True)
    limits = ServeLimits(head_timeout_s=1.0, body_timeout_s=1.0, limit_concurrency=64)
    with api(cfg, limits, tail=False) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        slow = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
        for s in slow:
            s.sendall(at_once)
        start = time.monotonic()
        closed: set[int] = set()
        for i in range(len(drip)):
            for n, s in enumerate(slow):
                if n in closed:
                    continue
                try:
                    s.sendall(drip[i : i + 1])
                except OSError:
                    closed.add(n)
            if len(closed) == len(slow) or time.monotonic() - start > 8:
                break
            if i == 3:  # meanwhile another client is served at once
                assert httpx.get(url + "/traces", timeout=5).status_code == 200
            time.sleep(0.1)
        for n, s in enumerate(slow):
            s.settimeout(max(0.1, 4 - (time.monotonic() - start)))
            try:
                if s.recv(1024) == b"":
                    closed.add(n)
            except (TimeoutError, OSError) as e:
                if not isinstance(e, TimeoutError):
                    closed.add(n)
            s.close()
        assert len(closed) == len(slow), f"{len(slow) - len(closed)} of {len(slow)} slow requests still held open"
        assert time.monotonic() - start < 6
        assert httpx.get(url + "/traces", timeout=5).status_code == 200


def test_writes_from_another_sites_page_are_refused_before_any_check(tmp_path: Path) -> None:
    with api(config("127.0.0.1:1", tmp_path, trust_loopback=True), tail=False) as (url, _):
        body = {"model": "m", "to": "previous", "reason": "csrf"}
        for headers in (
            {"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"},
            {"Origin": "https://evil.example"},  # a browser without Sec-Fetch-* headers
            {"Origin": "null"},
            {"Sec-Fetch-Site": "cross-site"},
        ):
            r = httpx.post(url + "/governance/rollback", json=body, headers=headers, timeout=10)
            assert r.status_code == 403, (headers, r.status_code, r.text)
            assert "refused" in r.json()["detail"]
        r = httpx.post(url + "/infer", json={"prompt": "x"}, headers={"Sec-Fetch-Site": "cross-site"}, timeout=10)
        assert r.status_code == 403
        # the API's own page: same origin; a read from elsewhere is not a write
        same = {"Sec-Fetch-Site": "same-origin", "Origin": url}
        assert httpx.post(url + "/governance/rollback", json=body, headers=same, timeout=10).status_code == 401
        assert httpx.get(url + "/traces", headers={"Sec-Fetch-Site": "cross-site"}, timeout=10).status_code == 200


def test_an_allowed_origin_may_write_cross_site(tmp_path: Path) -> None:
    cfg = config("127.0.0.1:1", tmp_path, cors_origins=["https://dash.example"])
    with api(cfg, tail=False) as (url, _):
        headers = {"Sec-Fetch-Site": "cross-site", "Origin": "https://dash.example"}
        r = httpx.post(url + "/governance/rollback", json={"model": "m", "reason": "x"}, headers=headers, timeout=10)
        assert r.status_code == 401  # through to the key check


def test_clients_of_a_proxy_on_this_machine_are_not_trusted(tmp_path: Path) -> None:
    # nginx's default proxy_pass: the peer is loopback and the Host the upstream's own name
    with api(config("127.0.0.1:1", tmp_path), tail=False) as (url, _):
        host = url.split("//")[1]
        r = httpx.get(url + "/traces", headers={"Host": host}, timeout=10)
        assert r.status_code == 401, "loopback trusted without --trust-loopback"
        r = httpx.post(url + "/infer", json={"prompt": "x"}, timeout=10)
        assert r.status_code == 401
    with api(config("127.0.0.1:1", tmp_path, trust_loopback=True), tail=False) as (url, _):
        assert httpx.get(url + "/traces", timeout=10).status_code == 200
        for header in ("X-Forwarded-For", "Forwarded", "X-Real-IP", "Via"):
            r = httpx.get(url + "/traces", headers={header: "203.0.113.9"}, timeout=10)
            assert r.status_code == 401, f"{header}: a proxied client was trusted as local"
        assert httpx.get(url + "/traces", headers={"Host": "rebinding.example"}, timeout=10).status_code == 400


def test_a_wildcard_cors_origin_or_host_is_refused(tmp_path: Path) -> None:
    settings = load_settings(bootstrap_servers="127.0.0.1:1", governance_dir=tmp_path)
    with pytest.raises(TrustConfigError, match="'\\*'"):
        ApiConfig("127.0.0.1:1", settings, cors_origins=["*"])
    with pytest.raises(TrustConfigError, match="'\\*'"):
        ApiConfig("127.0.0.1:1", settings, allowed_hosts=["*"])
    for flags, needle in (
        (["--cors-origin", "*"], "'*'"),
        (["--host", "0.0.0.0"], "without TLS"),
        (["--host", "0.0.0.0", "--insecure"], "--allowed-host"),
        (["--tls-cert", "c.pem"], "come together"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "evostream.cli", "api", "--bootstrap", "127.0.0.1:1", *flags],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 1 and needle in done.stderr, (flags, done.stderr)


@pytest.mark.integration
def test_a_caller_that_goes_away_frees_its_request_at_once(kafka: str, tmp_path: Path) -> None:
    with api(config(kafka, tmp_path, trust_loopback=True, infer_in_flight=1)) as (url, state):
        port = int(url.rsplit(":", 1)[1])
        body = b'{"prompt": "copy: abandoned", "timeout_s": 60}'
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(
            b"POST /infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        deadline = time.monotonic() + 30
        while state.infer_quota.waiting("peer:127.0.0.1") == 0:
            assert time.monotonic() < deadline, "the request never started"
            time.sleep(0.05)
        time.sleep(0.5)
        s.close()  # the caller gives up
        gone = time.monotonic()
        while state.infer_quota.waiting("peer:127.0.0.1") or state.client().in_flight:
            assert time.monotonic() - gone < 3, "the request was still awaited after its caller left"
            time.sleep(0.05)


@pytest.mark.integration
def test_reads_of_the_governance_log_are_kept_and_each_client_has_a_quota_of_them(kafka: str, tmp_path: Path) -> None:
    cfg = config(kafka, tmp_path, trust_loopback=True, governance_reads_per_s=1.0)
    cfg.settings = cfg.settings.model_copy(update={"governance_topic": f"test-abuse-gov-{uuid.uuid4().hex[:8]}"})
    glog = GovernanceLog(kafka, topic=cfg.settings.governance_topic)
    init(glog, tmp_path / "gov" / "keys", "admin")
    glog.close()
    with api(cfg, tail=False) as (url, state), from_address("127.0.0.2", timeout=30) as greedy:
        paths = ["/registry", "/governance/audit", "/registry?as_of=0"]
        answers = [greedy.get(url + paths[i % 3]) for i in range(40)]
        codes = [r.status_code for r in answers]
        assert codes[:20] == [200] * 20 and 429 in codes, codes  # a burst of 20, then 1 a second
        assert all(int(r.headers["Retry-After"]) >= 1 for r in answers if r.status_code == 429)
        assert state.governance.cache is not None and state.governance.cache.reads == 1  # the log was read once
        with from_address("127.0.0.3", timeout=30) as other:
            assert other.get(url + "/registry").status_code == 200


@pytest.mark.integration
def test_an_infer_flood_from_one_client_gets_429_and_another_client_is_served(
    kafka: str, deployment: Deployment
) -> None:
    cfg = ApiConfig(
        kafka, deployment.settings, allowed_hosts=HOSTS, trust_loopback=True, infer_in_flight=4, infer_per_s=1.0
    )
    with api(cfg) as (url, _):

        def flood() -> list[httpx.Response]:
            async def run() -> list[httpx.Response]:
                transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
                async with httpx.AsyncClient(transport=transport, timeout=120) as c:
                    body = {"prompt": "sort: dcba", "risk_wait_s": 0}
                    return list(await asyncio.gather(*(c.post(url + "/infer", json=body) for _ in range(30))))

            return asyncio.run(run())

        answers = flood()
        refused = [r for r in answers if r.status_code == 429]
        assert len(refused) >= 20, [r.status_code for r in answers]
        assert all(int(r.headers["Retry-After"]) >= 1 for r in refused)
        assert {r.status_code for r in answers} <= {200, 429}
        with from_address("127.0.0.3", timeout=120) as other:
            r = other.post(url + "/infer", json={"prompt": "copy: abc", "risk_wait_s": 0})
            assert r.status_code == 200, r.text
            assert r.json()["answer"]
