"""CPU time of processes from /proc, sampled against the wall clock: a benchmark reads off the CPU its subjects spent
between two moments they stamped themselves (a worker's Ready line, a job's first and last fold). Standard library
only: the PyFlink peer imports it from its own environment."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of ``pids`` so far, every thread counted; a process gone counts nothing."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks * TICK_S


def process_tree(root: int) -> list[int]:
    """``root`` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


class CpuMeter(threading.Thread):
    """The CPU of the processes ``pids()`` names (asked again every ``rescan_s``), sampled every ``period_s`` with the
    wall clock (``time.time()``) until ``halt`` is set, and once more then."""

    def __init__(self, pids: Callable[[], list[int]], period_s: float, rescan_s: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.pids, self.period_s, self.rescan_s = pids, period_s, rescan_s
        self.samples: list[tuple[float, float]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        pids, rescan = self.pids(), time.monotonic() + self.rescan_s
        while not self.halt.is_set():
            if time.monotonic() > rescan:
                pids, rescan = self.pids(), time.monotonic() + self.rescan_s
            self.samples.append((time.time(), cpu_seconds(pids)))
            self.halt.wait(self.period_s)
        self.samples.append((time.time(), cpu_seconds(self.pids())))

    def at(self, t: float, clamp: bool = False) -> float | None:
        """The CPU seconds at wall time ``t``, interpolated between the samples around it; outside them the nearest
        sample's with ``clamp``, else None."""
        before = [s for s in self.samples if s[0] <= t]
        after = [s for s in self.samples if s[0] >= t]
        if not before or not after:
            return (before or after)[-1 if before else 0][1] if clamp and self.samples else None
        (t0, c0), (t1, c1) = before[-1], after[0]
        return c0 if t1 == t0 else c0 + (c1 - c0) * (t - t0) / (t1 - t0)
