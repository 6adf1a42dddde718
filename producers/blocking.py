"""Which steps leave together as one step block: a trace's steps wait in the emitter process until its block is full,
its first step has waited the block window, a step needs the processors at once, or the emitter drains.

The stream processors pay about the same for a block whatever it holds (docs/benchmarks.md#stream-processors), and
one coalescing window of the generating thread holds one or two steps of a trace at 20-50 tokens a second: a block
cut there costs the processors more per step than single records did. Waiting for more of a trace's steps trades
that cost for the wait, so what must not wait does not: a step with non-finite values (the processors' CRITICAL
alert) ends its block and leaves at once, with the steps before it.

Pure: no Kafka, no clock of its own (the caller passes monotonic seconds).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from evostream.schemas.blocks import split_blocks

Step = Mapping[str, Any]


def urgent(step: Step) -> bool:
    """A step the processors must see at once: NaN or Inf in a layer's hidden state or in the token statistics."""
    if any(step["layer_nonfinite"]):
        return True
    return not all(math.isfinite(step[k]) for k in ("logprob", "entropy_bits", "surprisal_bits"))


class BlockBuffer:
    """Per trace, the steps not yet in a block. ``add`` takes a window's steps and returns the blocks that are ready;
    ``due`` the blocks whose first step has waited ``window_s``; ``flush`` every block, ready or not. Each block is a
    homogeneous run of one trace's steps in order (``schemas.blocks.split_blocks``), at most ``max_steps`` long."""

    def __init__(self, window_s: float, max_steps: int) -> None:
        if window_s < 0 or max_steps < 1:
            raise ValueError(f"a block window of {window_s} s and at most {max_steps} steps a block")
        self.window_s = window_s
        self.max_steps = max_steps
        self._steps: dict[str, list[Step]] = {}
        self._since: dict[str, float] = {}
        """When the first waiting step of each trace came."""

    def __len__(self) -> int:
        """Steps waiting."""
        return sum(map(len, self._steps.values()))

    def add(self, steps: Sequence[Step], now: float) -> list[list[Step]]:
        """Take ``steps`` (any traces, each trace's in order); the blocks ready now: full ones, runs that a shape
        change ended, and all of a trace's waiting steps when one of the new ones is urgent."""
        now_urgent: dict[str, bool] = {}
        for step in steps:
            trace = str(step["trace_id"])
            if trace not in self._steps:
                self._steps[trace], self._since[trace] = [], now
            self._steps[trace].append(step)
            now_urgent[trace] = now_urgent.get(trace, False) or urgent(step)
        out: list[list[Step]] = []
        for trace, hurry in now_urgent.items():
            runs = split_blocks(self._steps[trace])
            if hurry:
                out += [b for run in runs for b in self._cut(run)]
                del self._steps[trace], self._since[trace]
                continue
            out += [b for run in runs[:-1] for b in self._cut(run)]
            keep = runs[-1]
            full = len(keep) - len(keep) % self.max_steps
            out += self._cut(keep[:full])
            keep = keep[full:]
            if not keep:
                del self._steps[trace], self._since[trace]
            elif keep[0] is not self._steps[trace][0]:  # a new block waits from now (its first step came since)
                self._steps[trace], self._since[trace] = list(keep), now
        return out

    def due(self, now: float) -> list[list[Step]]:
        """The blocks of the traces whose first waiting step came ``window_s`` or more before ``now``."""
        late = [t for t, since in self._since.items() if now - since >= self.window_s]
        out = [b for t in late for b in self._cut(self._steps.pop(t))]
        for t in late:
            del self._since[t]
        return out

    def flush(self) -> list[list[Step]]:
        """Every waiting step, in blocks (a drain, a stop)."""
        out = [b for steps in self._steps.values() for b in self._cut(steps)]
        self._steps.clear()
        self._since.clear()
        return out

    def next_due(self) -> float | None:
        """When the oldest waiting block is due (monotonic seconds); None when nothing waits."""
        return min(self._since.values()) + self.window_s if self._since else None

    def _cut(self, steps: Sequence[Step]) -> list[list[Step]]:
        """One trace's ``steps`` in homogeneous blocks of at most ``max_steps``."""
        n = self.max_steps
        return [run[i : i + n] for run in split_blocks(steps) for i in range(0, len(run), n)]
