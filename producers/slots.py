"""A bound on things in flight that threads and asyncio coroutines wait on together, with no polling.

A thread waits on a condition; a coroutine on a future of its own loop. A slot freed (from any thread: replies come
on the reader's) goes to the longest-waiting coroutine first, handed over on its loop, else to a waiting thread. A
coroutine cancelled after its slot was handed over passes the slot on, so none is lost."""

from __future__ import annotations

import asyncio
import threading
from collections import deque


class Slots:
    def __init__(self, n: int) -> None:
        self._free = n
        self._cond = threading.Condition()
        self._waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = deque()

    def acquire(self, timeout_s: float | None = None) -> bool:
        """Take a slot, waiting at most ``timeout_s`` (None: as long as it takes); False if none came in time."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._free > 0, timeout_s):
                return False
            self._free -= 1
            return True

    async def aacquire(self) -> None:
        """Take a slot, waiting on the running loop until a release hands one over."""
        loop = asyncio.get_running_loop()
        with self._cond:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.append((loop, fut))
        try:
            await fut
        except asyncio.CancelledError:
            with self._cond:
                try:
                    self._waiters.remove((loop, fut))
                    handed = False
                except ValueError:
                    handed = True  # released to us: ``_hand`` passes it on if it has not run, else we do
            if handed and fut.done() and not fut.cancelled():
                self.release()
            raise

    def release(self) -> None:
        """Free a slot: to the first waiting coroutine, else to the pool (waking a waiting thread)."""
        with self._cond:
            while self._waiters:
                loop, fut = self._waiters.popleft()
                try:
                    loop.call_soon_threadsafe(self._hand, fut)
                except RuntimeError:  # its loop is closed: nobody waits there any more
                    continue
                return
            self._free += 1
            self._cond.notify()

    def _hand(self, fut: asyncio.Future[None]) -> None:
        """On the waiter's loop: the slot is its, unless it gave up meanwhile (then the next waiter's)."""
        if fut.done():
            self.release()
        else:
            fut.set_result(None)
