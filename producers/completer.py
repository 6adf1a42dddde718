"""Completions finished beside the decode loop: the prompts of finished requests embedded on a thread of their own.

On the default model the prompt embedding (MiniLM, 22M parameters) costs as much per request as decoding it: done inline
it took a large share of the service's busy time with continuous batching (py-spy, bench.serving at 8 in flight; see
docs/benchmarks.md#figures-behind-design-decisions). Here the decode loop hands each group of finished requests over and
goes on; the thread embeds every group waiting in one call (larger groups cost less per prompt) and calls each group's
``then`` with its vectors, where the Completions are sent. Torch releases the GIL inside its kernels, so the embedding
overlaps decoding where a core is free for it (on the 2-core bench machine the model decodes on one torch thread); the
Python parts of both still share the interpreter lock. ``submit`` blocks once ``max_pending`` prompts wait.

The owner learns what is done through ``then`` (thread-safe bookkeeping is its job), waits with ``wait`` before it
commits, and meets an embedding failure at its next ``check`` or ``wait``, as it would have met it inline.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence

from evostream.core.errors import EvoError

log = logging.getLogger("evostream.serve")
Embed = Callable[[list[str]], list[list[float]]]
Then = Callable[[list[list[float]]], None]


class CompleterError(EvoError):
    """The completion thread failed (its cause chained) or did not finish in time."""


class Completer:
    """A thread that embeds the prompts of finished requests in groups and hands each group its vectors."""

    def __init__(self, embed: Embed, max_group: int = 64, max_pending: int = 256) -> None:
        """``max_pending``: prompts waiting before ``submit`` blocks (back-pressure: a model that decodes faster than
        the embedder, e.g. on a GPU beside a CPU embedder, is held to its pace instead of queueing without end)."""
        self._embed = embed
        self._max_group = max_group
        self._max_pending = max_pending
        self._jobs: deque[tuple[list[str], Then]] = deque()
        self._busy = 0  # jobs submitted and not yet handed their vectors
        self._pending = 0  # prompts of those jobs
        self._error: BaseException | None = None
        self._closed = False
        self._cv = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="evostream-completer", daemon=True)
        self._thread.start()

    def submit(self, prompts: Sequence[str], then: Then) -> None:
        """Embed ``prompts`` (with whatever else is waiting) and call ``then`` with their vectors, in order."""
        self.check()
        with self._cv:
            if self._closed:
                raise CompleterError("the completer is closed")
            self._cv.wait_for(lambda: self._pending < self._max_pending or self._error is not None)
            self._jobs.append((list(prompts), then))
            self._busy += 1
            self._pending += len(prompts)
            self._cv.notify_all()
        self.check()

    @property
    def busy(self) -> int:
        """Jobs submitted whose ``then`` has not returned yet."""
        with self._cv:
            return self._busy

    def check(self) -> None:
        """Raise the thread's failure, if it failed: the project's own errors as they are (a lost broker stays a
        DeliveryError), anything else as a CompleterError."""
        if isinstance(self._error, EvoError):
            raise self._error
        if self._error is not None:
            raise CompleterError(f"completing requests failed: {self._error!r}") from self._error

    def wait(self, timeout_s: float = 60.0) -> None:
        """Until every job submitted so far has been handed its vectors (or the thread failed)."""
        with self._cv:
            if not self._cv.wait_for(lambda: self._busy == 0 or self._error is not None, timeout_s):
                raise CompleterError(f"{self._busy} groups of requests not completed within {timeout_s:.0f} s")
        self.check()

    def close(self, timeout_s: float = 60.0) -> None:
        """Finish what was submitted, then stop the thread (said in the log if it does not stop in time)."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("the completion thread did not stop within %.0f s (%d groups left)", timeout_s, self.busy)

    def _take(self) -> list[tuple[list[str], Then]] | None:
        with self._cv:
            self._cv.wait_for(lambda: self._jobs or self._closed)
            if not self._jobs:
                return None
            taken = [self._jobs.popleft()]
            n = len(taken[0][0])
            while self._jobs and n + len(self._jobs[0][0]) <= self._max_group:
                job = self._jobs.popleft()
                taken.append(job)
                n += len(job[0])
            return taken

    def _run(self) -> None:
        while (taken := self._take()) is not None:
            try:
                vectors = self._embed([p for prompts, _ in taken for p in prompts])
                at = 0
                for prompts, then in taken:
                    then(vectors[at : at + len(prompts)])
                    at += len(prompts)
            except BaseException as e:  # the owner meets it at its next check / wait, and stops
                with self._cv:
                    self._error = e
                    self._cv.notify_all()
                return
            finally:
                with self._cv:
                    self._busy -= len(taken)
                    self._pending -= sum(len(prompts) for prompts, _ in taken)
                    self._cv.notify_all()
