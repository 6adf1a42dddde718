"""BACKWARD_TRANSITIVE checks: every version of a record reads data written by every earlier version."""

from __future__ import annotations

import random
from io import BytesIO

from fastavro import schemaless_reader, schemaless_writer
from fastavro.utils import generate_many

from evostream.schemas.fingerprints import SchemaIndex, SchemaVersion


def check_pair(writer: SchemaVersion, reader: SchemaVersion, samples: int = 20, seed: int = 0) -> str | None:
    """None if ``reader`` decodes generated records of ``writer`` (keeping shared fields), else the reason."""
    state = random.getstate()
    random.seed(seed)
    try:
        records = list(generate_many(writer.parsed, samples))
    finally:
        random.setstate(state)
    reader_fields = {f["name"] for f in reader.parsed["fields"]}
    for record in records:
        buf = BytesIO()
        schemaless_writer(buf, writer.parsed, record)
        buf.seek(0)
        as_written = schemaless_reader(buf, writer.parsed, None)  # floats as stored (float32)
        buf.seek(0)
        try:
            back = schemaless_reader(buf, writer.parsed, reader.parsed)
        except Exception as e:  # SchemaResolutionError and friends
            return f"v{reader.version} cannot read v{writer.version}: {e}"
        if not isinstance(back, dict) or not isinstance(as_written, dict):
            return f"v{reader.version} read a non-record from v{writer.version}"
        for name in reader_fields & as_written.keys():
            if back[name] != as_written[name]:
                return f"v{reader.version} reads field {name!r} of v{writer.version} as a different value"
    return None


def check_backward_transitive(index: SchemaIndex) -> list[str]:
    """Every problem found, as '<record>: <reason>'; empty when the index is compatible."""
    problems = []
    for name in index.names():
        versions = index.versions(name)
        for j, reader in enumerate(versions):
            for writer in versions[: j + 1]:
                why = check_pair(writer, reader)
                if why:
                    problems.append(f"{reader.short_name}: {why}")
    return problems
