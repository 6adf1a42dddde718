"""Who may call what, decided on real Starlette requests: the TCP peer decides "this machine" (no header can claim
it), and this machine is trusted only when asked (``trust_loopback``) and never through a proxy's headers; reads
need a key unless opened, /infer needs one unless from a trusted local client, and a malformed key is refused before
the governance log is read."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.requests import Request

from bench.replay import ADMIN, Chain
from evostream.api.auth import Auth, Caller, is_local
from evostream.api.errors import AuthRequiredError, ForbiddenError
from evostream.consumers.governance.api_keys import token_for
from evostream.consumers.governance.projection import replay
from evostream.core.errors import InvalidTokenError


def request(
    peer: str, token: str | None = None, forwarded: str | None = None, extra: dict[str, str] | None = None
) -> Request:
    headers = [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    if token is not None:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    if forwarded is not None:
        headers.append((b"x-forwarded-for", forwarded.encode()))
    return Request({"type": "http", "method": "GET", "path": "/", "headers": headers, "client": (peer, 5000)})


class Registry:
    """The registry cache's interface over a real replayed log; counts its reads."""

    def __init__(self, chain: Chain) -> None:
        self.registry, _ = replay(chain.log())
        self.reads = 0

    def get(self) -> Any:
        self.reads += 1
        return self.registry


@pytest.fixture
def chain() -> Chain:
    c = Chain(seed=5)
    c.genesis()
    c.enroll("alice", ["approver"])
    return c


def test_this_machine_is_the_loopback_peer_whatever_the_headers_say() -> None:
    assert is_local(request("127.0.0.1")) and is_local(request("::1")) and is_local(request("::ffff:127.0.0.1"))
    assert not is_local(request("10.1.2.3", forwarded="127.0.0.1"))
    assert not is_local(request("localhost")) and not is_local(request("testclient"))


def test_reads_need_a_key_unless_opened_or_this_machine_is_trusted(chain: Chain) -> None:
    reg = Registry(chain)
    auth = Auth(reg)  # type: ignore[arg-type]
    with pytest.raises(AuthRequiredError, match="need an actor key"):
        auth.reader(request("127.0.0.1"))  # loopback is not trusted unless asked: a proxy here makes every client so
    with pytest.raises(AuthRequiredError, match="need an actor key"):
        auth.reader(request("10.1.2.3"))
    assert auth.reader(request("10.1.2.3", token_for(chain.keys["alice"], "alice", chain.events[0].hash))) == Caller(
        "alice", ("approver",)
    )
    trusted = Auth(reg, trust_loopback=True)  # type: ignore[arg-type]
    assert trusted.reader(request("127.0.0.1")) == Caller(None)
    assert trusted.publisher(request("::1")) == Caller(None)
    with pytest.raises(AuthRequiredError, match="need an actor key"):
        trusted.reader(request("10.1.2.3"))
    opened = Auth(reg, open_reads=True)  # type: ignore[arg-type]
    assert opened.reader(request("10.1.2.3")) == Caller(None)
    with pytest.raises(AuthRequiredError, match="opens reads only"):
        opened.publisher(request("10.1.2.3"))  # publishing is not a read
    with pytest.raises(AuthRequiredError, match="opens reads only"):
        opened.publisher(request("127.0.0.1"))


def test_a_request_through_a_proxy_on_this_machine_is_not_local_even_when_loopback_is_trusted(chain: Chain) -> None:
    trusted = Auth(Registry(chain), trust_loopback=True)  # type: ignore[arg-type]
    for header in ("x-forwarded-for", "forwarded", "x-real-ip", "via"):
        with pytest.raises(AuthRequiredError):
            trusted.reader(request("127.0.0.1", extra={header: "203.0.113.9"}))
        with pytest.raises(AuthRequiredError):
            trusted.publisher(request("127.0.0.1", extra={header: "203.0.113.9"}))


def test_writes_need_a_key_admin_needs_the_role_and_a_malformed_key_costs_no_read(chain: Chain) -> None:
    reg = Registry(chain)
    auth = Auth(reg)  # type: ignore[arg-type]
    with pytest.raises(AuthRequiredError):
        auth.writer(request("127.0.0.1"))
    with pytest.raises(InvalidTokenError, match="malformed"):
        auth.writer(request("127.0.0.1", "x" * 50))
    assert reg.reads == 0
    with pytest.raises(ForbiddenError, match="not an admin"):
        auth.admin(request("127.0.0.1", token_for(chain.keys["alice"], "alice", chain.events[0].hash)))
    assert auth.admin(request("127.0.0.1", token_for(chain.keys[ADMIN], ADMIN, chain.events[0].hash))).name == ADMIN
