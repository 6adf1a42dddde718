"""Actor keys: Ed25519 private keys kept in 0600 PEM files, key ids, and the signature over an event's chain hash.

An actor signs the 32 bytes of an event's hash (``events.chain_hash``), so a signature covers the event's content and
its place in the chain. A key is named by ``key_id``: the first 16 bytes of SHA-256 over the raw 32-byte public key,
in hex. Only this module touches ``cryptography``; the projection calls ``verify_signature``.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from evostream.consumers.governance.events import GovEvent, chain_hash
from evostream.core.errors import GovernanceError

SIGNATURE_ALG = "Ed25519"


def key_id_of(public_hex: str) -> str:
    """The key id of a raw Ed25519 public key (hex): hex SHA-256 of its 32 bytes, first 16 bytes (32 hex chars)."""
    try:
        raw = bytes.fromhex(public_hex)
    except ValueError as e:
        raise GovernanceError(f"public key {public_hex!r} is not hex") from e
    if len(raw) != 32:
        raise GovernanceError(f"an Ed25519 public key has 32 bytes, this one has {len(raw)}")
    return hashlib.sha256(raw).hexdigest()[:32]


@lru_cache(maxsize=4096)
def _public_key(public_hex: str) -> Ed25519PublicKey | None:
    """The key object of a public key hex (cached: replay verifies many events per actor), or None if malformed."""
    try:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex))
    except (ValueError, UnsupportedAlgorithm):
        return None


def verify_signature(public_hex: str, hash_hex: str, signature_hex: str) -> bool:
    """Whether ``signature_hex`` is the Ed25519 signature of the hash bytes by ``public_hex``; malformed input is
    simply not a valid signature."""
    key = _public_key(public_hex)
    if key is None:
        return False
    try:
        key.verify(bytes.fromhex(signature_hex), bytes.fromhex(hash_hex))
    except (InvalidSignature, ValueError):
        return False
    return True


class ActorKey:
    """An actor's Ed25519 private key: signs event hashes; saved as an unencrypted PKCS8 PEM readable by its owner
    only."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.public_hex: str = raw.hex()
        self.key_id: str = key_id_of(self.public_hex)

    @classmethod
    def generate(cls) -> ActorKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> ActorKey:
        """The key of a 32-byte seed (deterministic keys for tests and benchmarks; a real actor uses generate())."""
        if len(seed) != 32:
            raise GovernanceError(f"an Ed25519 seed has 32 bytes, got {len(seed)}")
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    def sign(self, hash_hex: str) -> str:
        """The signature (hex) of the 32 hash bytes."""
        try:
            digest = bytes.fromhex(hash_hex)
        except ValueError as e:
            raise GovernanceError(f"cannot sign {hash_hex!r}: not a hex hash") from e
        if len(digest) != 32:
            raise GovernanceError(f"cannot sign a {len(digest)}-byte value: an event hash has 32 bytes")
        return self._private.sign(digest).hex()

    def pem(self) -> bytes:
        return self._private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def save(self, path: str | Path) -> Path:
        """Write the key to a new file, mode 0600 from its creation (a directory made for it gets 0700); an existing
        file is never overwritten."""
        path = Path(path)
        missing = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
        for d in reversed(missing):
            try:
                d.mkdir(mode=0o700)
            except FileExistsError:
                pass
            except OSError as e:
                raise GovernanceError(f"cannot create the key directory {d}: {e}") from e
            os.chmod(d, 0o700)  # mkdir's mode is masked by the umask
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError as e:
            raise GovernanceError(
                f"{path} already exists: a key file is never overwritten; choose another path or remove it first"
            ) from e
        except OSError as e:
            raise GovernanceError(f"cannot create the key file {path}: {e}") from e
        try:
            os.fchmod(fd, 0o600)  # the umask may have removed bits, never added: this makes the mode exact
            with os.fdopen(fd, "wb") as f:
                f.write(self.pem())
        except OSError as e:
            raise GovernanceError(f"cannot write the key file {path}: {e}") from e
        return path

    @classmethod
    def load(cls, path: str | Path) -> ActorKey:
        """Read a key saved by save(); a missing, unreadable, group/world-accessible or non-Ed25519 file raises
        GovernanceError."""
        path = Path(path)
        try:
            st = path.stat()
            data = path.read_bytes()
        except FileNotFoundError as e:
            raise GovernanceError(f"no key file at {path}: enroll the actor first or pass the right --key path") from e
        except OSError as e:
            raise GovernanceError(f"cannot read the key file {path}: {e}") from e
        if st.st_mode & 0o077:
            raise GovernanceError(
                f"key file {path} has mode {stat.filemode(st.st_mode)}: others may read it; "
                f"run `chmod 600 {path}` (and consider the key compromised if others did)"
            )
        try:
            private = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as e:
            raise GovernanceError(f"{path} is not an unencrypted PEM private key: {e}") from e
        if not isinstance(private, Ed25519PrivateKey):
            raise GovernanceError(f"{path} holds a {type(private).__name__}, not an Ed25519 key")
        return cls(private)

    def __repr__(self) -> str:
        return f"ActorKey(key_id={self.key_id!r})"


def sign_event(ev: GovEvent, key: ActorKey) -> GovEvent:
    """``ev`` (already linked: hash set) signed by ``key``; the event must name this key and its hash must match its
    content."""
    if not ev.hash:
        raise GovernanceError(f"{ev.type}: link the event (GovEvent.linked) before signing it")
    if ev.key_id != key.key_id:
        raise GovernanceError(f"{ev.type}: the event names key {ev.key_id!r}, but the signing key is {key.key_id!r}")
    if chain_hash(ev.prev_hash, ev) != ev.hash:
        raise GovernanceError(f"{ev.type} #{ev.sequence}: its hash does not match its content; link it again")
    return replace(ev, signature=key.sign(ev.hash), signature_alg=SIGNATURE_ALG)
