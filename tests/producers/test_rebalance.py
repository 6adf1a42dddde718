"""A consumer-group rebalance in the middle of a batch, on the real broker.

Another member joins the serving group while the service is generating, takes partitions, and leaves without serving
anything. The service must go on serving, and every request must be answered: the batch commits (the broker accepts a
commit from the current generation while it prepares the next), and what the leaving member held comes back."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence

import pytest
from confluent_kafka import Consumer

from evostream.clock import now_us
from models.loading import LoadedModel
from producers.client import InferenceClient
from producers.generate import Generated, GenParams, InstrumentedGenerator
from producers.service import GROUP, InferenceService, ServeOptions
from producers.steps import StepBatch
from schemas.catalog import REQUESTS
from tests.producers.models import tiny
from tests.producers.replies import collect

pytestmark = pytest.mark.integration


class HeldGenerator(InstrumentedGenerator):
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


def test_a_rebalance_mid_batch_neither_stops_the_service_nor_loses_a_request(
    kafka: str,
) -> None:
    lm = tiny("t5")
    held = HeldGenerator(lm)
    svc = InferenceService(kafka, lm, None, ServeOptions(max_batch=16, max_wait_ms=200, max_prompt_tokens=64,
                                                      batching="static"),
                           generator=held)  # fmt: skip
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
        intruder = Consumer({"bootstrap.servers": kafka, "group.id": GROUP, "enable.auto.commit": False,
                             "auto.offset.reset": "earliest", "log_level": 3})  # fmt: skip
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
