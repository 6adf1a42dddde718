"""A consumer-group rebalance in the middle of a batch, on the real broker.

Another member joins the serving group while the service is generating, takes partitions, and leaves without serving
anything. The service must go on serving, and every request must be answered: the batch commits (the broker accepts a
commit from the current generation while it prepares the next), and what the leaving member held comes back."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from confluent_kafka import Consumer

from evostream.core.bus.security import client_config
from evostream.core.clock import now_us
from evostream.models.loading import LoadedModel
from evostream.producers.batching import Row, RowStepCallback, RunningBatch
from evostream.producers.client import InferenceClient
from evostream.producers.generate import Generated, GenParams, InstrumentedGenerator
from evostream.producers.service import GROUP, InferenceService, ServeOptions
from evostream.producers.steps import StepBatch
from evostream.schemas.catalog import REQUESTS
from tests.producers.models import tiny
from tests.producers.replies import collect

pytestmark = pytest.mark.integration


class Gate:
    """Where the service is held: ``entered`` once it is, ``release`` lets it go."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()


class HeldGenerator(InstrumentedGenerator, Gate):
    """The real generator, held at the start of its first batch until the test lets it go: the rebalance is made to
    land inside that batch, not near it."""

    def __init__(self, loaded: LoadedModel) -> None:
        super().__init__(loaded, max_prompt_tokens=64)
        self.entered = threading.Event()
        self.release = threading.Event()

    def generate(
        self, prompts: Sequence[str], params: GenParams, on_step: Callable[[StepBatch], None] | None = None
    ) -> list[Generated]:
        if not self.entered.is_set():
            self.entered.set()
            assert self.release.wait(120), "the test never released the held batch"
        return super().generate(prompts, params, on_step)


class HeldBatch(RunningBatch):
    """The real running batch, held at its first decoding step until the test lets it go (continuous batching)."""

    def __init__(self, generator: InstrumentedGenerator, max_rows: int, gate: Gate) -> None:
        super().__init__(generator, max_rows)
        self.gate = gate

    def step(self, on_step: RowStepCallback | None = None) -> list[Row]:
        if not self.gate.entered.is_set():
            self.gate.entered.set()
            assert self.gate.release.wait(120), "the test never released the held batch"
        return super().step(on_step)


class HeldService(InferenceService):
    def __init__(self, *args: Any, gate: Gate, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = gate

    def _new_batch(self) -> RunningBatch:
        return HeldBatch(self.generator, self.options.max_batch, self.gate)


@pytest.mark.parametrize("batching", ["static", "continuous"])
def test_a_rebalance_mid_batch_neither_stops_the_service_nor_loses_a_request(kafka: str, batching: str) -> None:
    lm = tiny("t5")
    options = ServeOptions(max_batch=16, max_wait_ms=200, max_prompt_tokens=64, batching=batching)  # type: ignore[arg-type]
    held: Gate
    if batching == "static":
        held = HeldGenerator(lm)
        svc = InferenceService(kafka, lm, None, options, generator=held)
    else:  # held inside the running batch's first step instead of the generator's first batch
        held = Gate()
        svc = HeldService(kafka, lm, None, options, gate=held)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            svc.run()
        except BaseException as e:  # the failure this test is about: a refused commit ended the service
            errors.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    intruder: Consumer | None = None
    try:
        client = InferenceClient(kafka)
        since = now_us()
        first = [client.publish(f"reverse: w{i}", max_new_tokens=8).request_id for i in range(6)]
        assert held.entered.wait(120), "the service never started on the requests"

        # a second member joins the group while the batch is being generated ...
        intruder = Consumer(
            {
                "bootstrap.servers": kafka,
                "group.id": GROUP,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "log_level": 3,
                **client_config(kafka),
            }
        )
        intruder.subscribe([REQUESTS])
        joined = threading.Event()
        intruder_stop = threading.Event()

        def poll_intruder() -> None:  # a member must keep polling to take part in the rebalance
            while not intruder_stop.is_set():
                intruder.poll(0.1)  # type: ignore[union-attr]
                if intruder.assignment():  # type: ignore[union-attr]
                    joined.set()

        poller = threading.Thread(target=poll_intruder, daemon=True)
        poller.start()
        time.sleep(3.0)  # its JoinGroup has reached the coordinator: the group is rebalancing
        held.release.set()  # ... and the batch finishes inside the rebalance
        assert joined.wait(120), "the second member never got partitions"
        # the intruder leaves without serving or committing anything: its partitions go back to the service
        intruder_stop.set()
        poller.join(10)
        intruder.close()
        intruder = None

        got = collect(kafka, set(first), since)
        assert errors == [] and thread.is_alive(), f"the service stopped: {errors}"
        counts = Counter(r["request_id"] for r in got)
        assert set(counts) == set(first) and all(n >= 1 for n in counts.values())
        assert all(r["error"] is None for r in got)

        # and it goes on serving
        since = now_us()
        later = [client.publish(f"reverse: later{i}", max_new_tokens=8).request_id for i in range(4)]
        assert Counter(r["request_id"] for r in collect(kafka, set(later), since, 120)) == Counter(later)
    finally:
        held.release.set()
        if intruder is not None:
            intruder.close()
        svc.stop_event.set()
        thread.join(60)
