"""The traffic split of a rollout: which requests the candidate answers, and which it answers in the shadow.

A request's arm is a number in [0, 1) drawn from its id and a salt by SHA-256, so the decision is a pure function of
what the log holds: replaying the requests of a rollout gives every request the arm it had. The candidate answers a
request when ``arm(request_id, salt) < weight / 100``; a request it does not answer is mirrored to it (answered by
production as usual, and by the candidate in the shadow) when ``arm(request_id, salt + ":shadow") < shadow_share``.
The two draws are independent, so the mirrored share of the requests left to production is ``shadow_share`` whatever
the weight. The salt is the rollout's id (a new rollout of the same candidate draws anew); outside a rollout, where
the staging version is shadowed by policy, it is ``staging:<version>``.

Raising the weight only adds requests to the candidate (a request under 5% is under 25%), so a request id retried
across steps is answered by the candidate from the step it first fell under the weight on.
"""

from __future__ import annotations

import hashlib
from typing import Literal

Arm = Literal["INCUMBENT", "CANDIDATE", "MIRRORED"]
"""INCUMBENT: production answers. CANDIDATE: the candidate answers (a canary answer). MIRRORED: production answers,
and the candidate answers a copy in the shadow (never returned)."""

SHADOW_SALT = ":shadow"
"""Appended to the salt for the mirror's draw, so that it is independent of the weight's."""


def arm(request_id: str, salt: str) -> float:
    """The request's draw in [0, 1): the first 8 bytes of sha256(salt + NUL + request_id), big-endian, over 2**64."""
    digest = hashlib.sha256(f"{salt}\0{request_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def staging_salt(version: str) -> str:
    """The salt of the staging version's shadow outside a rollout."""
    return f"staging:{version}"


def check(weight: int, shadow_share: float) -> None:
    """Raise ValueError unless ``weight`` is a percent (0 to 100) and ``shadow_share`` a share (0 to 1)."""
    if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
        raise ValueError(f"weight must be an integer percent from 0 to 100, got {weight!r}")
    if not 0.0 <= shadow_share <= 1.0:  # also refuses NaN
        raise ValueError(f"shadow_share must be from 0 to 1, got {shadow_share!r}")


def assign(request_id: str, salt: str, weight: int, shadow_share: float) -> Arm:
    """Which arm answers ``request_id`` under a split of ``weight`` percent to the candidate and ``shadow_share`` of
    the rest mirrored to it."""
    check(weight, shadow_share)
    if weight and arm(request_id, salt) < weight / 100:
        return "CANDIDATE"
    if shadow_share and arm(request_id, salt + SHADOW_SALT) < shadow_share:
        return "MIRRORED"
    return "INCUMBENT"
