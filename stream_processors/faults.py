"""Fault injection for the kill -9 test of the processors: a worker that kills itself at the one moment the test is
about. Test-only; off unless ``Settings.fault_kill_after`` (``EVOSTREAM_FAULT_KILL_AFTER``) is set.

The moment: at the first step of model version ``Settings.fault_kill_model`` from the n-th of them folded on, after
which the risk agent's batch has sent (and flushed) a FINAL report of that model and still holds steps it has not
folded, before the table write of that batch. (Counting only that model's steps keeps the kill where the test wants
it on a broker that holds other tests' traffic; a plain "after the n-th step" missed that window when partitions were
folded unevenly: CI saw a batch with no FINAL.) While armed, input offsets are never committed, so the restart
replays from the start."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field


@dataclass
class KillSwitch:
    """Decides when to SIGKILL this worker; ``trip`` does it."""

    after: int
    """Folded steps of ``model`` before the kill may happen (0: never)."""
    model: str
    folded: int = 0
    sent: list[list[str]] = field(default_factory=list)
    """[trace id, stage] of every report the current batch sent, for the log line the test reads."""

    @property
    def armed(self) -> bool:
        return self.after > 0

    def watches(self, model_version: str) -> bool:
        return self.armed and model_version == self.model

    def start_batch(self) -> None:
        self.sent = []

    def should_kill(self, reports: list[tuple[str, str]], folded: int, done: int, batch: int) -> bool:
        """Count a trace's folded steps and its sent reports; true once the moment above has come."""
        self.sent += [[trace, stage] for trace, stage in reports]
        self.folded += folded
        mid_batch = done < batch
        return self.folded >= self.after and mid_batch and any(stage == "FINAL" for _, stage in self.sent)

    @staticmethod
    def trip() -> None:
        os.kill(os.getpid(), signal.SIGKILL)
