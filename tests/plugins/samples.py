"""Sample records for the sink tests: real Avro values of every topic a sink reads, encoded and decoded through the
project's codec (so a sink sees exactly what the runner hands it), deterministic in their index."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from evostream.consumers.sinks.contract import Record
from evostream.plugins.api import DEFAULT_TOPICS
from evostream.schemas.catalog import ALERTS, COMPLETIONS, DRIFT, GOVERNANCE, PROFILES, RISK, ROUTES, STEPS, topic_spec
from evostream.schemas.codec import RecordCodec
from evostream.schemas.samples import (
    T0_US,
    alert,
    completion,
    drift_report,
    governance,
    profile,
    risk_report,
    route_decision,
    step,
)

BUILDERS = {
    COMPLETIONS: completion,
    RISK: risk_report,
    ALERTS: alert,
    DRIFT: drift_report,
    PROFILES: profile,
    GOVERNANCE: governance,
    STEPS: step,
    ROUTES: route_decision,
}


def records(topic: str, values: Sequence[dict[str, Any]], partition: int = 0, first_offset: int = 0) -> list[Record]:
    """``values`` as the runner hands them: encoded, decoded, with consecutive offsets."""
    codec = RecordCodec(topic_spec(topic).value_schema)
    name = codec.reader.short_name
    return [
        Record(topic, partition, first_offset + n, name, codec.decode(codec.encode(v)), T0_US + n, None)
        for n, v in enumerate(values)
    ]


def sample_records(
    topics: Sequence[str] = DEFAULT_TOPICS, per_topic: int = 3, first: int = 0, t_us: int = T0_US
) -> list[Record]:
    """``per_topic`` records of each topic, indices ``first`` onwards (offsets equal the index), topic by topic."""
    out: list[Record] = []
    for topic in topics:
        build = BUILDERS[topic]
        out += records(topic, [build(i, t_us) for i in range(first, first + per_topic)], first_offset=first)
    return out
