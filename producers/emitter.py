"""Emission of step events from a separate process, so that encoding and producing never take the generating
thread's interpreter lock.

The generation thread pickles each step's small host arrays into a pipe; a worker process (spawned, so CUDA and
threads in the parent are safe) builds the GenerationStep records, encodes them and produces them through its own
idempotent producer. The same steps also leave as step blocks to ``evo.step-blocks``, for the stream processors: a
trace's steps wait in the worker until its block is full, its first step has waited the block window, a step with
non-finite values comes, or the caller drains (``producers/blocking.py``); the per-step records leave with each pipe
message, on ``evo.steps``, for the readers of single steps.

On a GPU, decoding is bound by how fast Python launches kernels, and a worker *thread* doing the
same work stalls the generating thread on the interpreter lock at every token: bench.overhead measured that on a GPU
(see docs/benchmarks.md#withdrawn-or-not-re-measured, where the figure waits to be measured again).

The pipe is bounded by the operating system's buffer: when Kafka falls behind, ``submit`` blocks (back-pressure)
instead of dropping. A failure in the worker (encoding, delivery, the process dying) is raised to the generation
thread on its next ``submit``, ``drain`` or ``close`` as a ``DeliveryError``.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import pickle
import threading
import time
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection
from typing import Any

from evostream.core.errors import DeliveryError, EvoError
from evostream.producers.blocking import BlockBuffer
from evostream.producers.steps import AttentionSignal, StepBatch, TraceMeta, step_records
from evostream.schemas.catalog import STEP_BLOCKS, STEPS

_STEPS, _DRAIN, _STOP = 0, 1, 2
COALESCE_S = 0.025
"""Steps that follow within this window travel to the emitter process together: each wake-up of the emitter process
stalls the decoding threads it shares the cores with, and this window cut the emission's added time per token against
a shorter one on both the default model and GPT-2 (bench.overhead; see
docs/benchmarks.md#overhead-of-instrumented-generation-cpu). The first step after a pause still leaves at once."""
_READY, _DRAINED, _FAILED = "ready", "drained", "failed"
BLOCK_WINDOW_S = 0.2
"""How long a trace's first step waits in the emitter process for more of its steps to join its block (the default
of ``step_block_window_ms``); a drain, a full block or an urgent step ends the wait (``producers/blocking.py``)."""
BLOCK_MAX_STEPS = 64
"""Steps a block holds at most (the default of ``step_block_max_steps``)."""


class StepEmitter:
    """Encodes and produces GenerationStep records, and the StepBlock records of the same steps, in a worker
    process."""

    def __init__(
        self,
        bootstrap: str,
        topic: str = STEPS,
        blocks_topic: str = STEP_BLOCKS,
        producer_config: Mapping[str, Any] | None = None,
        start_timeout_s: float = 60.0,
        coalesce_s: float = COALESCE_S,
        block_window_s: float = BLOCK_WINDOW_S,
        block_max_steps: int = BLOCK_MAX_STEPS,
    ) -> None:
        BlockBuffer(block_window_s, block_max_steps)  # refused here, in the caller, not in the worker process
        self.topic = topic
        self.blocks_topic = blocks_topic
        self.coalesce_s = coalesce_s
        self._pending: list[tuple[Any, ...]] = []
        self._last_send = 0.0
        self.emitted = 0
        """Steps acknowledged by the broker as of the last ``drain``."""
        self.blocks_emitted = 0
        """StepBlock records acknowledged as of the last ``drain``."""
        self._error: str | None = None
        self._token = 0
        ctx = mp.get_context("spawn")
        self._jobs_r, self._jobs = ctx.Pipe(duplex=False)
        self._results, results_w = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(
            target=_worker,
            args=(
                bootstrap,
                topic,
                blocks_topic,
                dict(producer_config or {}),
                (block_window_s, block_max_steps),
                self._jobs_r,
                results_w,
                logging.getLogger().getEffectiveLevel(),
            ),
            name="evostream-step-emitter",
            daemon=True,
        )
        self._proc.start()
        results_w.close()
        self._await(_READY, start_timeout_s)

    def submit(
        self,
        batch: StepBatch,
        metas: Sequence[TraceMeta],
        model_version: str,
        signal: AttentionSignal,
        token_texts: Sequence[str],
    ) -> None:
        """Hand one step over to the worker; blocks while the worker is behind (back-pressure).

        Steps that follow each other within ``coalesce_s`` travel together (one pipe write and one wake-up of the
        worker for several steps); a step waits at most that long, or until the next step or ``drain``."""
        self._collect()
        self._raise()
        self._pending.append((batch, list(metas), model_version, signal, list(token_texts)))
        if time.monotonic() - self._last_send >= self.coalesce_s:
            self._send_pending()

    def _send_pending(self) -> None:
        if not self._pending:
            return
        payload = pickle.dumps((_STEPS, self._pending), protocol=5)
        self._pending = []
        self._last_send = time.monotonic()
        try:
            self._jobs.send_bytes(payload)
        except (BrokenPipeError, OSError) as e:
            raise DeliveryError(f"step emitter process is gone (exit code {self._proc.exitcode}): {e}") from e

    def drain(self, timeout_s: float = 60.0, stop: threading.Event | None = None) -> bool:
        """Wait until every submitted step is encoded and acknowledged by the broker; False, without waiting
        further, once ``stop`` is set (a stop asked for has its own, shorter budget for the last drain)."""
        self._send_pending()
        self._token += 1
        try:
            self._jobs.send_bytes(pickle.dumps((_DRAIN, self._token, timeout_s)))
        except (BrokenPipeError, OSError) as e:
            raise DeliveryError(f"step emitter process is gone (exit code {self._proc.exitcode}): {e}") from e
        if not self._await(_DRAINED, timeout_s + 5.0, self._token, stop):
            return False
        self._raise()
        return True

    def close(self, timeout_s: float = 60.0) -> None:
        """Drain, then stop the worker process."""
        try:
            if self._proc.is_alive():
                self.drain(timeout_s)
        finally:
            with contextlib.suppress(OSError):
                self._jobs.send_bytes(pickle.dumps((_STOP,)))
            self._proc.join(timeout_s)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join()
            self._jobs.close()
            self._results.close()

    def _collect(self) -> None:
        while self._results.poll():
            self._handle(self._results.recv())

    def _handle(self, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == _FAILED and self._error is None:
            self._error = msg[1]
        elif kind == _DRAINED:
            self.emitted, self.blocks_emitted = msg[2], msg[3]

    def _await(
        self, kind: str, timeout_s: float, token: int | None = None, stop: threading.Event | None = None
    ) -> bool:
        """True once the answer ``kind`` (of ``token``) came; False as soon as ``stop`` is set."""
        deadline = time.monotonic() + timeout_s
        while True:
            if stop is not None and stop.is_set():
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeliveryError(f"step emitter did not answer within {timeout_s:.0f} s")
            try:
                ready = self._results.poll(min(left, 0.5))
                msg = self._results.recv() if ready else None
            except (EOFError, OSError):
                msg = None
                ready = False
            if msg is not None:
                self._handle(msg)
                if msg[0] == kind and (token is None or msg[1] == token):
                    return True
                if msg[0] == _FAILED and kind == _READY:
                    self._raise()
            elif not self._proc.is_alive():
                self._raise()
                raise DeliveryError(f"step emitter process died (exit code {self._proc.exitcode})")

    def _raise(self) -> None:
        if self._error is not None:
            raise DeliveryError(f"step emission failed: {self._error}")


IDLE_POLL_S = 1.0
"""While no step arrives, the worker still serves its producer's callbacks this often, so a lost broker is reported
when it happens, not at the next step."""


def _worker(
    bootstrap: str,
    topic: str,
    blocks_topic: str,
    config: dict[str, Any],
    blocking: tuple[float, int],
    jobs: Connection,
    results: Connection,
    log_level: int,
) -> None:
    """The worker process: decode steps from the pipe, build, encode and produce their records, and their blocks as
    the block buffer lets them go."""
    from evostream.core.bus.producer import EventProducer  # imported here: the parent needs none of it
    from evostream.core.clock import now_us
    from evostream.schemas.blocks import block_record, from_steps
    from evostream.schemas.codec import RecordCodec

    # a spawned process starts without the parent's logging set-up: log at its level, in the serve format
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s (step emitter): %(message)s")

    try:
        producer = EventProducer(bootstrap, config)
        producer.connect(topic)
        producer.connect(blocks_topic)
        codec = RecordCodec("GenerationStep")
        blocks = RecordCodec("StepBlock")
    except EvoError as e:
        results.send((_FAILED, str(e)))
        return
    results.send((_READY,))
    buffer = BlockBuffer(*blocking)
    emitted, emitted_blocks, failed = 0, 0, False

    def fail(e: BaseException) -> None:
        nonlocal failed
        failed = True
        buffer.flush()  # nothing leaves after a failure (the requests are served again): no block waits either
        results.send((_FAILED, str(e) if isinstance(e, EvoError) else f"{type(e).__name__}: {e}"))

    def send_blocks(ready: list[list[Any]]) -> None:
        """The processors' input: one StepBlock record per block the buffer let go."""
        nonlocal emitted_blocks
        flushed = now_us()
        for run in ready:
            producer.send(blocks_topic, run[0]["trace_id"], blocks.encode(block_record(from_steps(run), flushed)))
            emitted_blocks += 1

    while True:
        due = None if failed else buffer.next_due()
        wait = IDLE_POLL_S if due is None else min(IDLE_POLL_S, max(0.0, due - time.monotonic()))
        try:
            if not jobs.poll(wait):
                if not failed:
                    try:
                        send_blocks(buffer.due(time.monotonic()))
                        producer.poll()
                    except Exception as e:
                        fail(e)
                continue
            msg = pickle.loads(jobs.recv_bytes())
        except EOFError:  # the parent is gone
            return
        if msg[0] == _STOP:
            return
        if msg[0] == _DRAIN:
            if not failed:  # every step submitted acknowledged: those waiting for their block leave now
                try:
                    send_blocks(buffer.flush())
                    producer.flush(msg[2])
                except Exception as e:
                    fail(e)
            results.send((_DRAINED, msg[1], emitted, emitted_blocks))
            continue
        if failed:
            continue  # keep reading so the parent never blocks; the failure is already reported
        try:
            recs = [rec for job in msg[1] for rec in step_records(*job)]
            for rec in recs:
                producer.send(topic, rec["trace_id"], codec.encode(rec))
            emitted += len(recs)
            now = time.monotonic()
            send_blocks(buffer.add(recs, now) + buffer.due(now))
        except Exception as e:  # reported to the generation thread, never swallowed
            fail(e)
