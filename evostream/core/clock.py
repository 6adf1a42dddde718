"""Wall-clock time as the contract writes it: integer microseconds since the Unix epoch.

Every service stamps records with it, so it lives in the core rather than in any one service."""

from __future__ import annotations

import time


def now_us() -> int:
    """Now, in microseconds since the epoch (the unit of every ``*_us`` field in the schemas)."""
    return time.time_ns() // 1000
