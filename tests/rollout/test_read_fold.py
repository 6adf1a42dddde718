"""Reading a rollout's topics back while traffic goes on (as `evostream compare` does on a live deployment): the read
ends where the partitions ended when it began, with every record written before it, instead of waiting for topics
that are never idle under steady traffic."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from evostream.core.bus.admin import ensure_topics
from evostream.core.clock import now_us
from evostream.schemas.catalog import CATALOG
from evostream.views.rollout import TOPICS, RolloutFold, read_fold
from tests.rollout.live import Traffic

pytestmark = pytest.mark.integration


def test_a_read_under_steady_traffic_ends_with_what_was_there(kafka: str) -> None:
    ensure_topics(kafka, [t for t in CATALOG if t.name in TOPICS])
    run = uuid.uuid4().hex[:8]
    inc, cand = f"m-{run}@1", f"m-{run}@2"
    since = now_us()
    with Traffic(kafka, inc, cand, per_s=40.0) as traffic:
        time.sleep(3)
        traffic.producer.flush(10)
        written = traffic.sent[inc]
        got: list[RolloutFold] = []
        reading = threading.Thread(target=lambda: got.append(read_fold(kafka, since, idle_s=3.0)), daemon=True)
        reading.start()  # the traffic goes on all along: never 3 s idle
        reading.join(30)
        ended = not reading.is_alive()
    reading.join(60)  # the traffic has stopped: an idle-bound read ends now
    assert ended, "the read did not end within 30 s: it waited for topics that never go idle"
    assert got and got[0].stats(inc, since).answers >= written
