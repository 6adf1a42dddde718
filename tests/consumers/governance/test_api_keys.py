"""HTTP API tokens of governance actors, checked against a real signed log folded in memory (no broker)."""

from __future__ import annotations

import pytest

from bench.replay import ADMIN, Chain
from evostream.consumers.governance.api_keys import actor_of, token_for
from evostream.consumers.governance.keys import ActorKey
from evostream.consumers.governance.projection import replay
from evostream.core.errors import InvalidTokenError


def chain() -> Chain:
    c = Chain(seed=3)
    c.genesis()
    c.enroll("alice", ["approver"])
    return c


def test_a_token_names_its_actor_and_roles_and_is_the_same_every_time() -> None:
    c = chain()
    reg, _ = replay(c.log())
    token = token_for(c.keys["alice"], "alice")
    assert token == token_for(c.keys["alice"], "alice")  # deterministic: nothing to store
    assert actor_of(token, reg) == ("alice", ["approver"])
    assert actor_of(token_for(c.keys[ADMIN], ADMIN), reg) == (ADMIN, ["admin"])


def test_forged_borrowed_malformed_and_revoked_tokens_are_refused_without_echoing_them() -> None:
    c = chain()
    reg, _ = replay(c.log())
    alice = token_for(c.keys["alice"], "alice")
    forged = token_for(ActorKey.from_seed(b"\x01" * 32), "alice")  # another key claiming alice
    borrowed = f"{ADMIN}." + alice.split(".")[1]  # alice's signature presented as the admin's
    for bad, why in (
        (forged, "does not match"),
        (borrowed, "does not match"),
        ("alice", "malformed"),
        ("alice." + "zz" * 64, "does not match"),
        ("mallory." + "00" * 64, "not enrolled"),
    ):
        with pytest.raises(InvalidTokenError, match=why) as e:
            actor_of(bad, reg)
        assert bad.split(".")[-1] not in str(e.value) or len(bad.split(".")[-1]) < 10
    c.append("ActorRevoked", ADMIN, {"actor_id": "alice"})
    revoked, _ = replay(c.log())
    with pytest.raises(InvalidTokenError, match="revoked"):
        actor_of(alice, revoked)
