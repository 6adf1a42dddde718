"""HTTP API tokens of governance actors, checked against a real signed log folded in memory (no broker)."""

from __future__ import annotations

import pytest

from bench.replay import ADMIN, Chain
from evostream.consumers.governance.api_keys import actor_of, token_for
from evostream.consumers.governance.keys import ActorKey
from evostream.consumers.governance.projection import replay
from evostream.core.errors import InvalidTokenError

NOW = 1_800_000_000.0


def chain(seed: int = 3) -> Chain:
    c = Chain(seed=seed)
    c.genesis()
    c.enroll("alice", ["approver"])
    return c


def test_a_token_names_its_actor_and_roles_and_is_valid_until_it_expires() -> None:
    c = chain()
    reg, _ = replay(c.log())
    assert reg.genesis_hash == c.events[0].hash
    token = token_for(c.keys["alice"], "alice", reg.genesis_hash, ttl_s=3600, now_s=NOW)
    assert token.split(".")[1:3] == [reg.genesis_hash[:16], str(int(NOW) + 3600)]
    assert actor_of(token, reg, now_s=NOW) == ("alice", ["approver"])
    assert actor_of(token, reg, now_s=NOW + 3599) == ("alice", ["approver"])
    admin = token_for(c.keys[ADMIN], ADMIN, reg.genesis_hash, now_s=NOW)  # 30 days by default
    assert actor_of(admin, reg, now_s=NOW + 29 * 86400) == (ADMIN, ["admin"])
    with pytest.raises(InvalidTokenError, match="expired at"):
        actor_of(admin, reg, now_s=NOW + 30 * 86400)
    with pytest.raises(InvalidTokenError, match="expired at"):
        actor_of(token, reg, now_s=NOW + 3600)


def test_a_token_for_another_log_is_refused_even_with_the_same_key() -> None:
    # two logs on one machine, one admin key: a token of one is not a token of the other
    one, other = Chain(seed=3), Chain(seed=3, start_us=1_760_000_000_000_001)
    one.genesis(), other.genesis()
    assert one.keys[ADMIN].public_hex == other.keys[ADMIN].public_hex
    reg_one, reg_other = replay(one.log())[0], replay(other.log())[0]
    assert reg_one.genesis_hash != reg_other.genesis_hash
    token = token_for(one.keys[ADMIN], ADMIN, reg_one.genesis_hash, now_s=NOW)
    with pytest.raises(InvalidTokenError, match="another governance log"):
        actor_of(token, reg_other, now_s=NOW)


def test_enrolling_an_actor_with_a_new_key_retires_the_old_keys_tokens() -> None:
    c = chain()
    reg, _ = replay(c.log())
    old = token_for(c.keys["alice"], "alice", reg.genesis_hash, now_s=NOW)
    c.enroll("alice", ["approver"])  # a new key for alice
    rotated, findings = replay(c.log())
    assert findings == []
    with pytest.raises(InvalidTokenError, match="which is no longer 'alice'"):
        actor_of(old, rotated, now_s=NOW)
    new = token_for(c.keys["alice"], "alice", reg.genesis_hash, now_s=NOW)
    assert actor_of(new, rotated, now_s=NOW) == ("alice", ["approver"])


def test_forged_borrowed_malformed_old_and_revoked_tokens_are_refused_without_echoing_them() -> None:
    c = chain()
    reg, _ = replay(c.log())
    log = reg.genesis_hash
    alice = token_for(c.keys["alice"], "alice", log, now_s=NOW)
    forged = token_for(ActorKey.from_seed(b"\x01" * 32), "alice", log, now_s=NOW)  # another key claiming alice
    borrowed = f"{ADMIN}." + alice.split(".", 1)[1]  # alice's signature presented as the admin's
    later = alice.replace(f".{int(NOW) + 30 * 86400}.", f".{int(NOW) + 300 * 86400}.")  # its expiry pushed back
    for bad, why in (
        (forged, "does not match"),
        (borrowed, "does not match"),
        (later, "does not match"),
        ("alice", "malformed"),
        (f"alice.{log[:16]}.{int(NOW) + 60}." + "zz" * 64, "does not match"),
        (f"mallory.{log[:16]}.{int(NOW) + 60}." + "00" * 64, "not enrolled"),
        ("alice." + "00" * 64, "old form"),
    ):
        with pytest.raises(InvalidTokenError, match=why) as e:
            actor_of(bad, reg, now_s=NOW)
        assert bad.split(".")[-1] not in str(e.value) or len(bad.split(".")[-1]) < 10
    c.append("ActorRevoked", ADMIN, {"actor_id": "alice"})
    revoked, _ = replay(c.log())
    with pytest.raises(InvalidTokenError, match="revoked"):
        actor_of(alice, revoked, now_s=NOW)
