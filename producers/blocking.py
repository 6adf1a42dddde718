"""Which steps leave together as one step block: a trace's steps wait in the emitter process until its block is full,
its first step has waited the block window, a step with non-finite hidden states comes, or the emitter drains.

The stream processors pay much the same for a block whatever it holds, and one coalescing window of the generating
thread holds a step or two of a trace: blocks cut there cost the processors several times what whole traces do
(bench.processors, bench.block_sizes; docs/benchmarks.md#steps-a-block-as-the-producer-ships-them). Waiting for more
of a trace's steps trades that cost for the wait, so what must not wait does not: a step with NaN or Inf values
(the processors' CRITICAL ``nonfinite_hidden`` alert) ends its block and leaves at once, with the steps before it.
Other alerts wait up to the window.

Pure: no Kafka, no clock of its own (the caller passes monotonic seconds).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from evostream.schemas.blocks import follows

Step = Mapping[str, Any]

MAX_BLOCK_BYTES = 512_000
"""What a block's packed columns may take: half the broker's and the client's default record limit (1,000,000
bytes), so that a block of a wide model (80 layers of 64 heads: ~21 kB a step) is cut by size before it is refused."""
_PACKED = ("layer_hidden_l2", "layer_hidden_maxabs", "head_attention_entropy", "ffn_sparsity", "hidden_sketch")


def urgent(step: Step) -> bool:
    """A step the processors must see at once: NaN or Inf in a layer's hidden state (their ``nonfinite_hidden``
    flag, CRITICAL), or in the token statistics."""
    if any(step["layer_nonfinite"]):
        return True
    return not all(math.isfinite(step[k]) for k in ("logprob", "entropy_bits", "surprisal_bits"))


def step_bytes(step: Step) -> int:
    """About what ``step`` adds to a block: its packed per-layer and per-head columns, its token text, its scalars."""
    packed = sum(len(step[k] or b"") for k in _PACKED)
    return packed + 4 * len(step["layer_nonfinite"]) + len(str(step["token_text"]).encode()) + 64


class BlockBuffer:
    """Per trace, the steps not yet in a block: one homogeneous run of strictly increasing steps. ``add`` takes a
    window's steps and returns the blocks that are ready; ``due`` the blocks whose first step has waited ``window_s``;
    ``flush`` every block, ready or not. A block holds at most ``max_steps`` steps and ``max_bytes`` of columns."""

    def __init__(self, window_s: float, max_steps: int, max_bytes: int = MAX_BLOCK_BYTES) -> None:
        if window_s < 0 or max_steps < 1 or max_bytes < 1:
            raise ValueError(f"a block window of {window_s} s, at most {max_steps} steps and {max_bytes} bytes")
        self.window_s = window_s
        self.max_steps = max_steps
        self.max_bytes = max_bytes
        self._runs: dict[str, list[Step]] = {}
        self._due: dict[str, float] = {}
        """When each trace's waiting block is due: its first step's arrival plus the window."""
        self._limit: dict[str, int] = {}
        """Steps each trace's waiting block may hold (its step count and byte limits)."""

    def __len__(self) -> int:
        """Steps waiting."""
        return sum(map(len, self._runs.values()))

    def add(self, steps: Sequence[Step], now: float) -> list[list[Step]]:
        """Take ``steps`` (any traces, each trace's in order); the blocks ready now: full ones, a trace's run that a
        step of another shape (or an earlier step) ended, and all of a trace's waiting steps when a new one is
        urgent."""
        out: list[list[Step]] = []
        hurry: list[str] = []
        for step in steps:
            trace = str(step["trace_id"])
            run = self._runs.get(trace)
            if run and not follows(run[-1], step):
                out.append(self._pop(trace))
                run = None
            if not run:
                run = self._runs[trace] = []
                self._due[trace] = now + self.window_s
                self._limit[trace] = max(1, min(self.max_steps, self.max_bytes // step_bytes(step)))
            run.append(step)
            if len(run) >= self._limit[trace]:
                out.append(self._pop(trace))
            if urgent(step):
                hurry.append(trace)
        out += [self._pop(trace) for trace in hurry if trace in self._runs]
        return out

    def due(self, now: float) -> list[list[Step]]:
        """The blocks of the traces whose first waiting step came ``window_s`` or more before ``now``."""
        return [self._pop(trace) for trace in [t for t, due in self._due.items() if now >= due]]

    def flush(self) -> list[list[Step]]:
        """Every waiting step, in blocks (a drain, a stop)."""
        return [self._pop(trace) for trace in list(self._runs)]

    def next_due(self) -> float | None:
        """When the oldest waiting block is due (monotonic seconds); None when nothing waits."""
        return min(self._due.values(), default=None)

    def _pop(self, trace: str) -> list[Step]:
        del self._due[trace], self._limit[trace]
        return self._runs.pop(trace)
