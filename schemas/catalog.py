"""The topic catalog: every topic evostream reads or writes, with its key, value schema and retention."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from evostream.schemas.errors import EvoError

FOREVER = -1
DAY_MS = 24 * 3600 * 1000

REQUESTS = "evo.requests"
STEPS = "evo.steps"
STEP_BLOCKS = "evo.step-blocks"
COMPLETIONS = "evo.completions"
PROFILES = "evo.profiles"
DRIFT = "evo.drift"
RISK = "evo.risk"
ALERTS = "evo.alerts"
GOVERNANCE = "evo.governance"
GOVERNANCE_SNAPSHOTS = "evo.governance.snapshots"
DLQ = "evo.dlq"
OUTCOMES = "evo.outcomes"
ROUTES = "evo.routes"
SHADOW = "evo.shadow"

# The consumer groups of the long-running services: names that readers (``/health``) share with the services, as
# they share topic names. The processors' group is a setting (``Settings.processors_app_id``).
INFERENCE_GROUP = "evostream-inference"
EVOLUTION_GROUP = "evostream-evolution"
NEURONS = "evo.neurons"


@dataclass(frozen=True)
class TopicSpec:
    """How one topic is laid out and kept."""

    name: str
    value_schema: str
    key: str
    """The field whose value is the record key (it decides the partition)."""
    partitions: int
    cleanup_policy: Literal["delete", "compact"]
    retention_ms: int
    """-1 keeps records forever."""
    doc: str

    def config(self) -> dict[str, str]:
        """Topic-level configs for CreateTopics."""
        return {"cleanup.policy": self.cleanup_policy, "retention.ms": str(self.retention_ms)}


CATALOG: tuple[TopicSpec, ...] = (
    TopicSpec(REQUESTS, "InferenceRequest", "request_id", 3, "delete", 7 * DAY_MS, "client requests to generate"),
    TopicSpec(STEPS, "GenerationStep", "trace_id", 6, "delete", 7 * DAY_MS, "one event per generated token"),
    # The same steps as evo.steps, one record per block of a trace's steps, for the stream processors.
    # Keyed and partitioned as evo.steps, so a trace's blocks and its steps share a partition number.
    TopicSpec(STEP_BLOCKS, "StepBlock", "trace_id", 6, "delete", 7 * DAY_MS, "a trace's steps, one record a block"),
    TopicSpec(COMPLETIONS, "Completion", "trace_id", 3, "delete", 30 * DAY_MS, "one event per request"),
    # As many partitions as evo.steps: the profiling table keyed by model_version is co-partitioned with both.
    TopicSpec(NEURONS, "NeuronCounts", "model_version", 6, "delete", 7 * DAY_MS, "FFN neuron firing counts"),
    TopicSpec(PROFILES, "ProfileSnapshot", "model_version", 1, "compact", FOREVER, "latest profile per model"),
    TopicSpec(DRIFT, "DriftReport", "model_version", 1, "delete", 90 * DAY_MS, "drift window reports"),
    TopicSpec(RISK, "RiskReport", "trace_id", 3, "delete", 30 * DAY_MS, "risk per trace, early and final"),
    TopicSpec(ALERTS, "RiskAlert", "trace_id", 3, "delete", 90 * DAY_MS, "risk reports that crossed policy"),
    # Co-partitioned with evo.steps' readers by trace; kept a year: a risk probe is trained from them.
    TopicSpec(OUTCOMES, "Outcome", "trace_id", 3, "delete", 365 * DAY_MS, "labels: was a generation right"),
    # Keyed by request: a request's decisions (before, during, at the door) stay in order on one partition.
    TopicSpec(ROUTES, "RouteDecision", "request_id", 3, "delete", 90 * DAY_MS, "why each request went where it went"),
    # Keyed by request, as evo.routes: a mirrored request's comparison sits beside its decisions.
    TopicSpec(SHADOW, "ShadowComparison", "request_id", 3, "delete", 90 * DAY_MS, "staged version vs production"),
    # One partition: the governance chain is totally ordered, and it is never compacted nor expired.
    TopicSpec(GOVERNANCE, "GovernanceEvent", "model_name", 1, "delete", FOREVER, "the governance log"),
    # A cache of the projection folded up to an offset of the log: the latest per log is enough.
    TopicSpec(GOVERNANCE_SNAPSHOTS, "GovernanceSnapshot", "log_topic", 1, "compact", FOREVER, "governance snapshots"),
    TopicSpec(DLQ, "DeadLetter", "original key", 1, "delete", 30 * DAY_MS, "records that could not be processed"),
)


def topic_spec(name: str) -> TopicSpec:
    """The catalog entry of ``name``."""
    for spec in CATALOG:
        if spec.name == name:
            return spec
    raise EvoError(f"topic {name!r} is not in the catalog; known: {', '.join(s.name for s in CATALOG)}")
