"""The one rule for a policy file's fields, shared by the risk and drift policies."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from evostream.core.errors import PolicyError


def check_fields(d: Mapping[str, Any], allowed: Iterable[str], required: Iterable[str], kind: str, source: str) -> None:
    """Refuse a field the policy does not know, and a missing required one: a missing field would be filled with the
    code default, which is the uncalibrated fallback's number and would be quoted as this policy's own."""
    unknown = sorted(set(d) - set(allowed))
    if unknown:
        raise PolicyError(f"{source}: unknown {kind} policy fields {unknown}")
    missing = [f for f in required if f not in d]
    if missing:
        raise PolicyError(
            f"{source}: {kind} policy {d.get('name', '?')} lacks {missing} (every field must be in "
            "the file; the code defaults are only the fallback when no file exists)"
        )
