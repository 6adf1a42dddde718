"""Content-addressed model artifacts: a folder is stored under the SHA-256 of its manifest, and re-hashed on every open.

The manifest lists every file of the folder (relative POSIX path, SHA-256, size), sorted by path and written as
canonical JSON, so the same folder always gets the same digest, wherever it lies and whatever its files' times. The
digest names the artifact (``sha256:<hex>``): a governance event that registers a version names it, and the serving
side opens exactly those bytes or nothing.

Layout under ``root``::

    sha256/<hex>/manifest.json   the canonical manifest (its SHA-256 is <hex>)
    sha256/<hex>/files/...       the folder's files, read-only, loadable as they are (``from_pretrained`` takes it)
    tmp/                         puts in progress

A put copies into a fresh folder under ``tmp/``, fsyncs every file and folder, then renames it into place in one
step, so a reader never sees half an artifact and concurrent puts of the same content (threads or processes) end
with one copy: the first rename wins, the others find the artifact there and drop their copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from evostream.core.errors import ArtifactError

MANIFEST_FORMAT = "evostream-artifact/1"
SCHEME = "sha256:"
_HEX = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileEntry:
    """One file of an artifact, as the manifest records it."""

    path: str
    """Relative to the artifact's folder, ``/``-separated."""
    sha256: str
    size: int


@dataclass(frozen=True)
class ArtifactRef:
    """A stored artifact: its URI (``sha256:<hex>``), its digest, and the folder holding its files."""

    uri: str
    sha256: str
    path: Path


@runtime_checkable
class ArtifactBackend(Protocol):
    """Where artifacts live. The local store is one; an object store would verify into a local cache the same way."""

    def put_dir(self, src: Path) -> ArtifactRef:
        """Store the folder ``src``; the same content always gets the same reference."""
        ...

    def open(self, sha256: str) -> Path:
        """A local folder holding exactly the bytes registered as ``sha256``, verified now; ArtifactError if not."""
        ...


def manifest_bytes(entries: Iterable[FileEntry]) -> bytes:
    """The canonical manifest of ``entries``: sorted by path, canonical JSON (sorted keys, no spaces), UTF-8."""
    rows = sorted(entries, key=lambda e: e.path)
    for a, b in itertools.pairwise(rows):
        if a.path == b.path:
            raise ArtifactError(f"a manifest lists {a.path!r} twice")
    doc = {"format": MANIFEST_FORMAT, "files": [{"path": e.path, "sha256": e.sha256, "size": e.size} for e in rows]}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def manifest_digest(entries: Iterable[FileEntry]) -> str:
    """The artifact's digest: hex SHA-256 of its canonical manifest."""
    return hashlib.sha256(manifest_bytes(entries)).hexdigest()


def parse_digest(sha256: str) -> str:
    """The 64-hex digest of ``sha256`` given as ``<hex>`` or ``sha256:<hex>``."""
    digest = sha256.removeprefix(SCHEME)
    if not _HEX.fullmatch(digest):
        raise ArtifactError(
            f"{sha256!r} is not an artifact digest: expected 64 lowercase hex digits, optionally prefixed by 'sha256:'"
        )
    return digest


def parse_manifest(raw: bytes) -> list[FileEntry]:
    """The entries of a canonical manifest; ArtifactError if it is not one."""
    try:
        doc = json.loads(raw.decode("utf-8"))
        if doc["format"] != MANIFEST_FORMAT:
            raise ArtifactError(f"unknown manifest format {doc['format']!r} (this evostream reads {MANIFEST_FORMAT})")
        entries = [FileEntry(str(f["path"]), str(f["sha256"]), int(f["size"])) for f in doc["files"]]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ArtifactError(f"malformed artifact manifest: {e}") from e
    if manifest_bytes(entries) != raw:
        raise ArtifactError("the artifact manifest is not in canonical form")
    return entries


def _listing(folder: Path) -> list[tuple[str, Path]]:
    """Every regular file under ``folder`` (a symlinked file counts as its target) as (relative path, path)."""
    out: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        here = Path(dirpath)
        for d in dirnames:
            if (here / d).is_symlink():
                raise ArtifactError(f"{here / d} is a symlink to a folder: an artifact holds files only, copy it in")
        for name in filenames:
            p = here / name
            if not p.is_file():
                raise ArtifactError(f"{p} is not a regular file (a dangling link, a pipe...): it cannot be stored")
            out.append((p.relative_to(folder).as_posix(), p))
    return sorted(out)


def _hash_file(path: Path) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _copy_hashed(src: Path, dst: Path) -> tuple[str, int]:
    """Copy ``src`` to the new file ``dst``, fsynced and read-only; the digest and size of what was written."""
    h, size = hashlib.sha256(), 0
    with src.open("rb") as fi, dst.open("xb") as fo:
        for chunk in iter(lambda: fi.read(_CHUNK), b""):
            h.update(chunk)
            size += len(chunk)
            fo.write(chunk)
        fo.flush()
        os.fsync(fo.fileno())
    dst.chmod(0o444)
    return h.hexdigest(), size


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ArtifactStore:
    """The local content-addressed store under ``root`` (created on first use)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _dir(self, digest: str) -> Path:
        return self.root / "sha256" / digest

    def _ref(self, digest: str) -> ArtifactRef:
        return ArtifactRef(uri=SCHEME + digest, sha256=digest, path=self._dir(digest) / "files")

    def contains(self, sha256: str) -> bool:
        """Whether the artifact is present (not whether it is intact: ``open`` checks that)."""
        return (self._dir(parse_digest(sha256)) / "manifest.json").is_file()

    def put_dir(self, src: Path) -> ArtifactRef:
        """Store the folder ``src`` under its manifest's digest; a put of content already stored writes nothing."""
        src = Path(src)
        if not src.is_dir():
            raise ArtifactError(f"cannot store {src}: it is not a folder")
        try:
            files = _listing(src)
            entries = [FileEntry(rel, *_hash_file(p)) for rel, p in files]
        except OSError as e:
            raise ArtifactError(f"cannot read {src} to store it: {e}") from e
        if not entries:
            raise ArtifactError(f"cannot store {src}: it holds no files")
        digest = manifest_digest(entries)
        final = self._dir(digest)
        if final.exists():
            return self._ref(digest)
        try:
            (self.root / "tmp").mkdir(parents=True, exist_ok=True)
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f"{digest[:12]}-", dir=self.root / "tmp"))
        except OSError as e:
            raise ArtifactError(f"cannot write to the artifact store at {self.root}: {e}") from e
        try:
            self._fill(tmp, src, files, digest)
            try:
                os.rename(tmp, final)
            except OSError:
                if not (final / "manifest.json").is_file():
                    raise
                # a concurrent put of the same content renamed first: its copy is this one, byte for byte
            else:
                _fsync_dir(final.parent)
        except OSError as e:
            raise ArtifactError(f"cannot store {src} in the artifact store at {self.root}: {e}") from e
        finally:
            with contextlib.suppress(OSError):
                shutil.rmtree(tmp)
        return self._ref(digest)

    @staticmethod
    def _fill(tmp: Path, src: Path, files: list[tuple[str, Path]], digest: str) -> None:
        """Copy ``files`` into ``tmp/files``, check the copy is what was hashed, write the manifest, fsync it all."""
        dirs = {tmp, tmp / "files"}
        (tmp / "files").mkdir()
        copied = []
        for rel, p in files:
            dst = tmp / "files" / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            dirs.update(d for d in dst.parents if d.is_relative_to(tmp))
            copied.append(FileEntry(rel, *_copy_hashed(p, dst)))
        if manifest_digest(copied) != digest:
            raise ArtifactError(f"{src} changed while it was being stored: put it again once nothing writes to it")
        manifest = tmp / "manifest.json"
        with manifest.open("xb") as fh:
            fh.write(manifest_bytes(copied))
            fh.flush()
            os.fsync(fh.fileno())
        manifest.chmod(0o444)
        for d in sorted(dirs, key=lambda d: len(d.parts), reverse=True):
            _fsync_dir(d)

    def open(self, sha256: str) -> Path:
        """The folder of artifact ``sha256``, after re-hashing every stored byte against its manifest.

        ArtifactError when the artifact is missing, its manifest altered, or any file missing, added or different;
        the message names each file with its expected and actual hash."""
        digest = parse_digest(sha256)
        base = self._dir(digest)
        uri = SCHEME + digest
        if not base.is_dir():
            raise ArtifactError(
                f"artifact {uri} is not in the store at {self.root}: put the model's folder "
                "(`ArtifactStore.put_dir`) before serving it"
            )
        manifest = base / "manifest.json"
        try:
            raw = manifest.read_bytes()
        except OSError as err:
            raise ArtifactError(
                f"artifact {uri} has no readable manifest ({err}): remove {base} and put the model's folder again"
            ) from err
        actual = hashlib.sha256(raw).hexdigest()
        if actual != digest:
            raise ArtifactError(
                f"the manifest of artifact {uri} ({manifest}) was altered: it hashes to {actual}. "
                f"Remove {base} and put the model's folder again"
            )
        entries = parse_manifest(raw)
        files = base / "files"
        try:
            present = dict(_listing(files)) if files.is_dir() else {}
            problems = []
            for entry in entries:
                p = present.pop(entry.path, None)
                if p is None:
                    problems.append(f"{entry.path} is missing (expected sha256 {entry.sha256}, {entry.size} bytes)")
                    continue
                h, n = _hash_file(p)
                if (h, n) != (entry.sha256, entry.size):
                    problems.append(
                        f"{entry.path} differs: expected sha256 {entry.sha256} ({entry.size} bytes), "
                        f"found {h} ({n} bytes)"
                    )
            problems += [f"{rel} is not in the manifest (an added file)" for rel in sorted(present)]
        except OSError as e:
            raise ArtifactError(f"cannot read artifact {uri} at {base}: {e}") from e
        if problems:
            raise ArtifactError(
                f"artifact {uri} at {base} does not match its manifest, so it is refused: "
                f"{'; '.join(problems)}. Remove {base} and put the model's folder again"
            )
        return files
