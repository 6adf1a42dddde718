"""Actor keys: key ids, signatures, 0600 key files, and signing linked events."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from evostream.consumers.governance.events import GovEvent
from evostream.consumers.governance.keys import ActorKey, key_id_of, sign_event, verify_signature
from evostream.core.errors import GovernanceError

HASH = hashlib.sha256(b"an event").hexdigest()


def test_key_id_is_first_16_bytes_of_sha256_of_raw_public_key() -> None:
    # RFC 8032 section 7.1, test 1: this secret key has this public key
    key = ActorKey.from_seed(bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"))
    assert key.public_hex == "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    assert key.key_id == hashlib.sha256(bytes.fromhex(key.public_hex)).hexdigest()[:32]
    assert len(key.key_id) == 32
    assert key_id_of(key.public_hex) == key.key_id
    assert ActorKey.generate().key_id != key.key_id
    # and signs the empty message as the RFC says (Ed25519 is deterministic)
    assert key._private.sign(b"").hex() == (
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555f"
        "b8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    )


def test_key_id_of_refuses_malformed_public_keys() -> None:
    with pytest.raises(GovernanceError, match="not hex"):
        key_id_of("zz")
    with pytest.raises(GovernanceError, match="32 bytes"):
        key_id_of("00" * 31)


def test_signature_verifies_only_for_its_key_and_hash() -> None:
    key, other = ActorKey.generate(), ActorKey.generate()
    sig = key.sign(HASH)
    assert len(bytes.fromhex(sig)) == 64
    assert verify_signature(key.public_hex, HASH, sig) is True
    assert verify_signature(other.public_hex, HASH, sig) is False
    assert verify_signature(key.public_hex, hashlib.sha256(b"another").hexdigest(), sig) is False
    flipped = sig[:-2] + f"{int(sig[-2:], 16) ^ 1:02x}"
    assert verify_signature(key.public_hex, HASH, flipped) is False
    # malformed input is an invalid signature, not a crash
    assert verify_signature(key.public_hex, HASH, "not hex") is False
    assert verify_signature("abcd", HASH, sig) is False
    assert verify_signature(key.public_hex, HASH, "") is False


def test_sign_refuses_what_is_not_a_32_byte_hash() -> None:
    key = ActorKey.generate()
    with pytest.raises(GovernanceError, match="not a hex hash"):
        key.sign("xyz")
    with pytest.raises(GovernanceError, match="32 bytes"):
        key.sign("00" * 16)


def test_save_creates_0600_file_in_0700_dir_and_load_gives_same_key(tmp_path: Path) -> None:
    key = ActorKey.generate()
    path = tmp_path / "keys" / "nested" / "alice.pem"
    old = os.umask(0)  # the modes must not depend on a permissive umask
    try:
        assert key.save(path) == path
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded = ActorKey.load(path)
    assert (loaded.key_id, loaded.public_hex) == (key.key_id, key.public_hex)
    assert verify_signature(key.public_hex, HASH, loaded.sign(HASH))


def test_save_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    first = ActorKey.generate()
    first.save(path)
    with pytest.raises(GovernanceError, match="never overwritten"):
        ActorKey.generate().save(path)
    assert ActorKey.load(path).key_id == first.key_id


def test_load_refuses_missing_open_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(GovernanceError, match="no key file"):
        ActorKey.load(tmp_path / "absent.pem")
    path = ActorKey.generate().save(tmp_path / "k.pem")
    path.chmod(0o644)
    with pytest.raises(GovernanceError, match="chmod 600"):
        ActorKey.load(path)
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"not a key")
    junk.chmod(0o600)
    with pytest.raises(GovernanceError, match="not an unencrypted PEM"):
        ActorKey.load(junk)


def test_load_refuses_a_non_ed25519_key(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path = tmp_path / "ec.pem"
    path.write_bytes(pem)
    path.chmod(0o600)
    with pytest.raises(GovernanceError, match="not an Ed25519 key"):
        ActorKey.load(path)


def _event(key: ActorKey) -> GovEvent:
    return GovEvent(type="PolicyChanged", actor="alice", key_id=key.key_id, payload={"policy": {}})


def test_sign_event_signs_the_linked_hash() -> None:
    key = ActorKey.generate()
    ev = _event(key).linked(0, "", 1_000)
    signed = sign_event(ev, key)
    assert signed.hash == ev.hash
    assert signed.signature_alg == "Ed25519"
    assert verify_signature(key.public_hex, signed.hash, signed.signature)
    assert (signed.sequence, signed.prev_hash, signed.payload) == (0, "", {"policy": {}})


def test_sign_event_refuses_unlinked_wrong_key_and_stale_hash() -> None:
    key = ActorKey.generate()
    with pytest.raises(GovernanceError, match="link the event"):
        sign_event(_event(key), key)
    with pytest.raises(GovernanceError, match="the signing key is"):
        sign_event(_event(key).linked(0, "", 1), ActorKey.generate())
    ev = _event(key).linked(0, "", 1)
    stale = GovEvent(**{**ev.__dict__, "reason": "edited after linking"})
    with pytest.raises(GovernanceError, match="does not match its content"):
        sign_event(stale, key)
