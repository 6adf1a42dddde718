"""Background emission of step events: the generation thread hands over host arrays; a worker encodes and produces.

The queue is bounded: when Kafka falls behind, ``submit`` blocks (back-pressure) instead of dropping. A failure in the
worker (encoding, delivery) is raised to the generation thread on its next ``submit`` or on ``close``.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any

from evostream.bus.producer import EventProducer
from evostream.errors import DeliveryError
from schemas.catalog import STEPS
from schemas.codec import RecordCodec

Job = Callable[[], Sequence[dict[str, Any]]]
_STOP = object()


class _Barrier:
    def __init__(self) -> None:
        self.reached = threading.Event()


class StepEmitter:
    """Encodes and produces GenerationStep records on a worker thread."""

    def __init__(self, producer: EventProducer, topic: str = STEPS, max_pending: int = 1024) -> None:
        self.producer = producer
        self.topic = topic
        self.codec = RecordCodec("GenerationStep")
        self._q: queue.Queue[object] = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self.emitted = 0
        self._worker = threading.Thread(target=self._run, name="evostream-step-emitter", daemon=True)
        self._worker.start()

    def submit(self, job: Job) -> None:
        """Queue a job that builds records (run on the worker, off the generation thread)."""
        self._raise()
        self._q.put(job)

    def _run(self) -> None:
        while True:
            job = self._q.get()
            if job is _STOP:
                return
            if isinstance(job, _Barrier):
                job.reached.set()
                continue
            if self._error is not None:
                continue  # drain without work once failed; the error is reported to the caller
            try:
                for rec in job():  # type: ignore[operator]
                    self.producer.send(self.topic, rec["trace_id"], self.codec.encode(rec))
                    self.emitted += 1
            except BaseException as e:  # surfaced to the generation thread, never swallowed
                self._error = e

    def _raise(self) -> None:
        if self._error is not None:
            err = self._error
            raise DeliveryError(f"step emission failed: {err}") from err

    def drain(self, timeout_s: float = 60.0) -> None:
        """Wait until every submitted job is encoded and every record acknowledged."""
        barrier = _Barrier()
        self._q.put(barrier)
        if not barrier.reached.wait(timeout_s):
            raise DeliveryError(f"step emitter did not catch up within {timeout_s:.0f} s")
        self._raise()
        self.producer.flush(timeout_s)

    def close(self, timeout_s: float = 60.0) -> None:
        try:
            self.drain(timeout_s)
        finally:
            self._q.put(_STOP)
            self._worker.join(timeout_s)
