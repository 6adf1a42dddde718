"""The head of the governance log as this machine last verified it, anchored outside Kafka in a local file.

A log cut short is a valid chain of its first events: the hash chain cannot tell. So every process that verifies the
log (the writer, the governed serving, the API, the CLI's readers) keeps the highest head it verified (genesis hash,
sequence, head hash, offset) in ``head-<topic>.json`` beside the keys, and refuses a log that does not reach that
head through its chain: shorter (the topic was cut or recreated with a prefix of its events, which could bring back
an old version or a revoked actor), with another genesis (another log under the same name), or with another event at
that sequence. The file only moves forward. ``reset_anchor`` is the deliberate way back, for a log replaced on
purpose (``evostream governance anchor --reset``).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
from collections.abc import Collection, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from evostream.consumers.governance.checkpoint import verify_checkpoints
from evostream.consumers.governance.events import GovEvent
from evostream.consumers.governance.projection import Finding, Registry
from evostream.core.clock import now_us
from evostream.core.errors import GovernanceError

RESET_HINT = "evostream governance anchor --reset"


@dataclass(frozen=True)
class Anchor:
    """The highest head of one log that this machine verified."""

    genesis_hash: str
    sequence: int
    head_hash: str
    offset: int
    written_at_us: int

    def where(self) -> str:
        when = dt.datetime.fromtimestamp(self.written_at_us / 1e6, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"sequence {self.sequence} (offset {self.offset}, hash {self.head_hash[:16]}, verified {when})"


def anchor_path(governance_dir: Path, topic: str) -> Path:
    """Where this machine anchors the head of the log on ``topic``."""
    return governance_dir / f"head-{topic}.json"


def read_anchor(path: Path) -> Anchor | None:
    """The anchor in ``path``, or None if there is none yet; GovernanceError for a file that is not one."""
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        return Anchor(
            str(d["genesis_hash"]), int(d["sequence"]), str(d["head_hash"]), int(d["offset"]), int(d["written_at_us"])
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise GovernanceError(f"{path} is not a governance head anchor ({e}): restore it, or `{RESET_HINT}`") from e


def _chain_hash_at(registry: Registry, events: Iterable[tuple[int | None, GovEvent]], sequence: int) -> str | None:
    """The hash of the event at ``sequence`` on the chain the registry folded (walked back from its head by
    prev_hash), or None if the chain does not reach back there."""
    by_hash: dict[str, GovEvent] = {}
    for off, ev in events:
        if off is None or off <= registry.offset:  # what the registry folded; a later copy or forgery never counts
            by_hash.setdefault(ev.hash, ev)
    current = by_hash.get(registry.head_hash)
    while current is not None and current.sequence > sequence:
        before = by_hash.get(current.prev_hash)
        if before is None or before.sequence >= current.sequence:  # a link that does not go back: no chain
            return None
        current = before
    return current.hash if current is not None and current.sequence == sequence else None


def check_anchor(
    anchor: Anchor | None, registry: Registry, events: list[tuple[int | None, GovEvent]], path: Path
) -> Finding | None:
    """A "truncated" finding if the log (``events`` as read, folded into ``registry``) does not reach ``anchor``
    through its chain; None if it does (or there is no anchor)."""
    if anchor is None:
        return None
    fix = (
        f"Nothing is served or written on it. Restore the missing events; if the log was replaced on purpose (a new "
        f"broker), accept it as it is with `{RESET_HINT}` (anchor: {path})"
    )
    verified = f"this machine verified it up to {anchor.where()}"
    if registry.head_sequence < 0:
        return Finding(None, -1, "truncated", f"the log is empty, but {verified}: it was recreated. {fix}")
    if registry.genesis_hash != anchor.genesis_hash:
        return Finding(
            None,
            0,
            "truncated",
            f"the log's first event has hash {registry.genesis_hash[:16]}, but this machine verified a log whose "
            f"first event has hash {anchor.genesis_hash[:16]}, up to {anchor.where()}: it is another log. {fix}",
        )
    if anchor.offset in registry.voided:  # an admin's forced void took the anchored event out of the chain
        return None
    if registry.head_sequence < anchor.sequence:
        return Finding(
            None,
            registry.head_sequence,
            "truncated",
            f"the log ends at sequence {registry.head_sequence} (offset {registry.offset}), but {verified}: it was cut "
            f"short or recreated with fewer events. {fix}",
        )
    found = _chain_hash_at(registry, events, anchor.sequence)
    if found != anchor.head_hash:
        return Finding(
            None,
            anchor.sequence,
            "truncated",
            f"event #{anchor.sequence} of the log now has hash {(found or 'none')[:16]}, but {verified}: the log was "
            f"cut and written again from there. {fix}",
        )
    return None


def anchor_findings(
    registry: Registry,
    items: Iterable[tuple[int | None, GovEvent | Finding]],
    *,
    anchor: Path,
    checkpoints: Path | None = None,
) -> list[Finding]:
    """What this machine's anchors say of a log replayed into ``registry`` from ``items``: the head file
    (``check_anchor``), and the signed checkpoints this machine's writes left (``checkpoint.verify_checkpoints``)."""
    events = [(off, ev) for off, ev in items if isinstance(ev, GovEvent) and off not in registry.voided]
    found = check_anchor(read_anchor(anchor), registry, events, anchor)
    out = [] if found is None else [found]
    if checkpoints is not None:
        out += verify_checkpoints(checkpoints, events, voided=registry.voided)
    return out


def _locked_write(path: Path, anchor: Anchor, only_forward: bool) -> bool:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(path.with_name(path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # several processes of this machine verify the same log
            old = read_anchor(path)
            if (
                only_forward
                and old is not None
                and (old.genesis_hash != anchor.genesis_hash or old.sequence >= anchor.sequence)
            ):
                return False  # another log's anchor is replaced only by reset_anchor
            tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
            tmp.write_text(json.dumps(asdict(anchor), sort_keys=True) + "\n", encoding="utf-8")
            os.replace(tmp, path)
            return True
    except OSError as e:
        raise GovernanceError(f"cannot write the governance head anchor {path}: {e}") from e


def advance_anchor(path: Path, registry: Registry) -> bool:
    """Anchor the head of a log that was verified with no finding (the anchor included): written only if it is
    further than the anchor already there. Whether it was written."""
    if registry.head_sequence < 0 or not registry.genesis_hash:
        return False
    anchor = Anchor(registry.genesis_hash, registry.head_sequence, registry.head_hash, registry.offset, now_us())
    return _locked_write(path, anchor, only_forward=True)


def reset_anchor(path: Path, registry: Registry, also: Collection[Path] = ()) -> list[Path]:
    """Accept the log as it is now: the anchor (and ``also``, e.g. the checkpoint file) moved aside as
    ``<name>.replaced-<time>``, and the log's head anchored. The paths moved aside."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    moved = []
    for p in (path, *also):
        if p.exists():
            target = p.with_name(f"{p.name}.replaced-{stamp}")
            p.rename(target)
            moved.append(target)
    if registry.head_sequence >= 0:
        anchor = Anchor(registry.genesis_hash, registry.head_sequence, registry.head_hash, registry.offset, now_us())
        _locked_write(path, anchor, only_forward=False)
    return moved
