"""Handing one batch to one sink until it is applied, retried out, or dead-lettered: the runner's decision logic,
with no Kafka in it (the runner supplies the clock, the sleep and the dead-letter writer), so the shared contract
test drives every sink through exactly the path the runner takes.

A ``RETRYABLE`` answer is tried again with exponential backoff (``base_s`` doubling up to ``max_s``) for as long as
it takes: an endpoint that is down for an hour must not lose an hour of reports. ``stop`` lets a shutting-down
runner give up between attempts (the batch then stays uncommitted and is read again). A ``FAILED`` answer sends
its poison records (all of the batch when it names none, or names only records that are not in the batch) to the
dead-letter writer with the sink's reason. A sink
that raises instead of answering is a ``FAILED`` with the exception as the reason: a bug in one sink must not stop
the others or block its partition. Since a raise names no record, a batch that raised is split in halves and each
delivered again (writes are idempotent by the contract), down to the single records that raise: one record a sink
cannot take (a negative count, a NaN where a number is needed) is dead-lettered alone, the good records beside it
are applied."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from evostream.consumers.sinks.contract import Record, Result, SinkLike, Status


@dataclass(frozen=True)
class Backoff:
    base_s: float = 0.5
    max_s: float = 30.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt`` + 1 (attempt 1 is the first retry's wait)."""
        return float(min(self.max_s, self.base_s * 2.0 ** min(max(attempt - 1, 0), 60)))


@dataclass
class Delivered:
    """What became of one batch."""

    attempts: int = 0
    applied: int = 0
    dead: list[tuple[Record, str]] = field(default_factory=list)
    stopped: bool = False
    """True when ``stop`` ended the retries: nothing of the batch may be committed."""
    reasons: list[str] = field(default_factory=list)
    """The reason of every retryable answer, in order."""


DeadLetter = Callable[[Record, str], None]


def deliver(
    sink: SinkLike,
    records: Sequence[Record],
    dead_letter: DeadLetter,
    backoff: Backoff = Backoff(),
    sleep: Callable[[float], None] = time.sleep,
    stop: Callable[[], bool] = lambda: False,
    on_retry: Callable[[int, str, float], None] = lambda attempt, reason, wait: None,
) -> Delivered:
    """Write ``records`` to ``sink`` as the contract says (see the module docstring)."""
    out = Delivered()
    if records:
        _deliver(sink, list(records), dead_letter, backoff, sleep, stop, on_retry, out)
    return out


def _deliver(
    sink: SinkLike,
    records: list[Record],
    dead_letter: DeadLetter,
    backoff: Backoff,
    sleep: Callable[[float], None],
    stop: Callable[[], bool],
    on_retry: Callable[[int, str, float], None],
    out: Delivered,
) -> None:
    """``deliver`` for ``records``, adding to ``out``."""
    retries = 0
    while True:
        out.attempts += 1
        try:
            result = sink.write(records)
        except Exception as e:  # a sink's bug becomes a dead letter, never a stopped runner
            if len(records) > 1:  # which record raised is not known: halve until it is
                half = len(records) // 2
                for part in (records[:half], records[half:]):
                    _deliver(sink, part, dead_letter, backoff, sleep, stop, on_retry, out)
                    if out.stopped:
                        return
                return
            result = Result.failed(f"{type(e).__name__}: {e}")
        if result.status is Status.OK:
            out.applied += len(records)
            return
        if result.status is Status.FAILED:
            batch = {r.key for r in records}
            named = {r.key: r for r in result.poison if r.key in batch}  # each once, and only the batch's own
            poison = list(named.values()) or list(records)
            keys = {r.key for r in poison}
            for rec in poison:
                dead_letter(rec, result.reason)
            out.dead += [(r, result.reason) for r in poison]
            out.applied += sum(r.key not in keys for r in records)
            return
        out.reasons.append(result.reason)
        retries += 1
        wait = backoff.delay(retries)
        on_retry(retries, result.reason, wait)
        if stop():
            out.stopped = True
            return
        sleep(wait)
        if stop():
            out.stopped = True
            return
