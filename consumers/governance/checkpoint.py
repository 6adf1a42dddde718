"""Signed checkpoints of the governance log's head, kept in a JSONL file outside the topic.

The hash chain shows an altered, dropped, inserted or reordered event, but not a cut tail: a log truncated after
event n is a perfectly valid chain of n + 1 events. A checkpoint written elsewhere remembers how far the log went
(sequence, head hash, offset, time), signed by an actor's key; ``verify_checkpoints`` reports each checkpoint the log
no longer reaches, or whose event at that sequence now has another hash, as a "truncated" finding.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Collection, Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from evostream.consumers.governance.events import GovEvent, canonical_json
from evostream.consumers.governance.keys import ActorKey, verify_signature
from evostream.consumers.governance.projection import Finding
from evostream.core.clock import now_us
from evostream.core.errors import GovernanceError


@dataclass(frozen=True)
class Checkpoint:
    """The log's head as one actor saw it at one time, signed by that actor's key."""

    sequence: int
    head_hash: str
    offset: int
    written_at_us: int
    key_id: str
    signature: str = ""

    def digest(self) -> str:
        """Hex SHA-256 of the signed fields as canonical JSON: what the signature covers."""
        body = {k: v for k, v in asdict(self).items() if k != "signature"}
        return hashlib.sha256(canonical_json(body).encode()).hexdigest()

    def to_line(self) -> str:
        return canonical_json(asdict(self)) + "\n"

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Checkpoint:
        types = {
            "sequence": int,
            "head_hash": str,
            "offset": int,
            "written_at_us": int,
            "key_id": str,
            "signature": str,
        }
        for name, t in types.items():
            if not isinstance(d.get(name), t) or isinstance(d.get(name), bool):
                raise GovernanceError(f"field {name!r} must be {t.__name__}, got {d.get(name)!r}")
        return cls(**{name: d[name] for name in types})


def write_checkpoint(
    path: str | Path, head: tuple[int, str, int], key: ActorKey, at_us: int | None = None
) -> Checkpoint:
    """Append a checkpoint of ``head`` = (sequence, hash, offset) (``GovernanceLog.head()``) signed by ``key`` to the
    JSONL file at ``path`` (created if missing), synced to disk before returning."""
    sequence, head_hash, offset = head
    if sequence < 0:
        raise GovernanceError("the governance log is empty: there is no head to checkpoint yet")
    unsigned = Checkpoint(sequence, head_hash, offset, now_us() if at_us is None else at_us, key.key_id)
    cp = replace(unsigned, signature=key.sign(unsigned.digest()))
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            f.write(cp.to_line())
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise GovernanceError(f"cannot write the checkpoint file {path}: {e}") from e
    return cp


def read_checkpoints(path: str | Path) -> tuple[list[tuple[int, Checkpoint]], list[Finding]]:
    """(line number, checkpoint) of each line of the file, and an "undecodable" finding for each line that is not one.
    A missing file holds no checkpoints."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return [], []
    except (OSError, UnicodeDecodeError) as e:
        raise GovernanceError(f"cannot read the checkpoint file {path}: {e}") from e
    good: list[tuple[int, Checkpoint]] = []
    bad: list[Finding] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            if not isinstance(d, dict):
                raise GovernanceError("not a JSON object")
            good.append((n, Checkpoint.from_json(d)))
        except (ValueError, GovernanceError) as e:
            bad.append(Finding(None, -1, "undecodable", f"{path} line {n} is not a checkpoint: {e}"))
    return good, bad


def enrolled_keys(events: Iterable[tuple[int | None, GovEvent]]) -> dict[str, str]:
    """key_id -> public key hex of every key an ActorEnrolled event of ``events`` names."""
    keys: dict[str, str] = {}
    for _, ev in events:
        if ev.type == "ActorEnrolled":
            kid, pub = ev.payload.get("key_id"), ev.payload.get("public_key")
            if isinstance(kid, str) and isinstance(pub, str):
                keys[kid] = pub
    return keys


def verify_checkpoints(
    path: str | Path,
    events: Iterable[tuple[int | None, GovEvent]],
    *,
    keys: Mapping[str, str] | None = None,
    voided: Collection[int] = (),
) -> list[Finding]:
    """Findings of the checkpoints in ``path`` against the log's ``events`` ((offset, event) in log order):

    - "truncated": the log has no event at a checkpoint's sequence (it was cut), or the event there has another hash
      (it was cut and written again);
    - "forged": a checkpoint's signature does not verify: it proves nothing and is not compared;
    - "unknown_actor": the signing key is neither in ``keys`` (key_id -> public key hex) nor enrolled in ``events``;
      such a checkpoint is still compared (the log may have lost the enrolment with its tail), and a mismatch is
      reported as "truncated" saying the signature could not be checked;
    - "undecodable": a line of the file that is not a checkpoint.

    A checkpoint of an event at a ``voided`` offset (an admin's forced void took it out of the chain) is passed over.
    """
    events = list(events)
    by_sequence: dict[int, tuple[int | None, GovEvent]] = {}
    for off, ev in events:
        by_sequence.setdefault(ev.sequence, (off, ev))
    head = max(by_sequence, default=-1)
    trusted = {**enrolled_keys(events), **(keys or {})}
    checkpoints, findings = read_checkpoints(path)
    for line, cp in checkpoints:
        if cp.offset in voided:
            continue
        where = f"checkpoint at {path}:{line} (#{cp.sequence}, offset {cp.offset}, key {cp.key_id})"
        public = trusted.get(cp.key_id)
        unverified = ""
        if public is None:
            unverified = " (its key is not enrolled in the log, so its signature could not be checked)"
        elif not verify_signature(public, cp.digest(), cp.signature):
            findings.append(Finding(cp.offset, cp.sequence, "forged", f"{where}: the signature does not verify"))
            continue
        found = by_sequence.get(cp.sequence)
        if found is None:
            findings.append(
                Finding(
                    cp.offset,
                    cp.sequence,
                    "truncated",
                    f"{where}: the log ends at #{head}, before this checkpoint: events were cut{unverified}",
                )
            )
        elif found[1].hash != cp.head_hash:
            findings.append(
                Finding(
                    found[0],
                    cp.sequence,
                    "truncated",
                    f"{where}: event #{cp.sequence} now has hash {found[1].hash[:16]}, the checkpoint says "
                    f"{cp.head_hash[:16]}: the log was cut and written again from there{unverified}",
                )
            )
        elif unverified:
            findings.append(Finding(cp.offset, cp.sequence, "unknown_actor", f"{where}: matches the log{unverified}"))
    return findings
