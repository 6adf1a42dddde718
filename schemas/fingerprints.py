"""Every schema version in the repository, addressable by record name and by CRC-64-AVRO fingerprint.

Files are named ``<Record>.v<N>.avsc``; each is self-contained (it defines every named type it uses).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

from evostream.schemas.errors import SchemaError, UnknownFingerprintError

NAMESPACE = "io.evostream"
AVRO_DIR = Path(__file__).parent / "avro"
_FILE_RE = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)\.v(?P<version>[0-9]+)\.avsc$")


@dataclass(frozen=True)
class SchemaVersion:
    """One version of one record schema, parsed and fingerprinted."""

    name: str
    """Full name, e.g. ``io.evostream.GenerationStep``."""
    version: int
    source: str
    parsed: dict[str, Any] = field(repr=False, compare=False)
    fingerprint: bytes = field(repr=False)
    """The 8-byte little-endian CRC-64-AVRO of the parsing canonical form."""

    @property
    def short_name(self) -> str:
        return self.name.rsplit(".", 1)[-1]

    @classmethod
    def from_json(cls, raw: dict[str, Any], version: int, source: str) -> SchemaVersion:
        """Parse one schema document; errors name the source."""
        try:
            parsed = parse_schema(raw)
            if not isinstance(parsed, dict):
                raise SchemaError(f"{source}: top-level type must be a record")
            canonical = to_parsing_canonical_form(parsed)
            fp = bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))
        except SchemaError:
            raise
        except Exception as e:  # fastavro raises a mix of SchemaParseException, KeyError, ValueError
            raise SchemaError(f"{source}: not a valid Avro schema: {e}") from e
        if parsed.get("type") != "record":
            raise SchemaError(f"{source}: top-level type must be a record, got {parsed.get('type')!r}")
        return cls(name=str(parsed["name"]), version=version, source=source, parsed=parsed, fingerprint=fp)

    @classmethod
    def from_file(cls, path: Path) -> SchemaVersion:
        m = _FILE_RE.match(path.name)
        if m is None:
            raise SchemaError(f"{path}: schema files must be named <Record>.v<N>.avsc")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise SchemaError(f"{path}: cannot read schema: {e}") from e
        sv = cls.from_json(raw, int(m["version"]), str(path))
        if sv.short_name != m["name"]:
            raise SchemaError(f"{path}: file is named for {m['name']} but defines {sv.short_name}")
        return sv


class SchemaIndex:
    """A read-only set of schema versions: the latest version of a record is its writer schema."""

    def __init__(self, versions: Iterable[SchemaVersion]) -> None:
        self._by_name: dict[str, list[SchemaVersion]] = {}
        self._by_fp: dict[bytes, SchemaVersion] = {}
        for sv in versions:
            other = self._by_fp.get(sv.fingerprint)
            if other is not None:
                raise SchemaError(f"{sv.source} and {other.source} are the same schema (same fingerprint)")
            self._by_fp[sv.fingerprint] = sv
            self._by_name.setdefault(sv.name, []).append(sv)
        for name, svs in self._by_name.items():
            svs.sort(key=lambda s: s.version)
            numbers = [s.version for s in svs]
            if numbers != list(range(1, len(svs) + 1)):
                raise SchemaError(f"{name}: versions must run 1..N without gaps, found {numbers}")

    @classmethod
    def from_directory(cls, directory: Path) -> SchemaIndex:
        paths = sorted(directory.glob("*.avsc"))
        if not paths:
            raise SchemaError(f"no *.avsc schema files in {directory}")
        return cls(SchemaVersion.from_file(p) for p in paths)

    def full_name(self, name: str) -> str:
        return name if "." in name else f"{NAMESPACE}.{name}"

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def versions(self, name: str) -> list[SchemaVersion]:
        try:
            return list(self._by_name[self.full_name(name)])
        except KeyError:
            raise SchemaError(f"unknown record {name!r}; known: {', '.join(self.names())}") from None

    def latest(self, name: str) -> SchemaVersion:
        return self.versions(name)[-1]

    def by_fingerprint(self, fp: bytes) -> SchemaVersion:
        try:
            return self._by_fp[fp]
        except KeyError:
            raise UnknownFingerprintError(
                f"unknown writer schema fingerprint {fp.hex()}: the record was written with a schema this "
                "process does not have (a newer evostream, or not an evostream record)"
            ) from None

    def __iter__(self) -> Iterator[SchemaVersion]:
        for name in self.names():
            yield from self._by_name[name]


@cache
def default_index() -> SchemaIndex:
    """The schemas shipped in this package."""
    return SchemaIndex.from_directory(AVRO_DIR)
