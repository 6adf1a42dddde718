"""The evolution consumer: runs a cycle when drift fires on the production version and on a schedule, one at a time,
and proposes what it finds to governance, signed with its own key.

Triggers: ``drift:<version>`` the first time a DriftReport that fired names the production version (more windows of
the same drift start no new cycle until another version serves), ``schedule:<period>`` every ``every_s`` seconds,
``manual:<time>`` from ``evostream evolve``. A trigger is handled once: its candidate's ModelRegistered names it,
so a consumer restarted mid-cycle (its drift offsets not yet committed) reads the report again and skips what the
log shows done, and otherwise runs the cycle again from the start."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from evostream.consumers.evolution.cycle import CycleConfig, CycleResult, run_cycle
from evostream.consumers.evolution.inputs import read_observed
from evostream.consumers.evolution.propose import handled_triggers, propose
from evostream.consumers.evolution.sandbox import RiskRate
from evostream.consumers.governance.service import Governance
from evostream.core.artifacts import ArtifactStore
from evostream.core.bus.consumer import EventConsumer
from evostream.core.errors import ConsumeError, EvolutionError
from evostream.models.loading import LoadedModel, load_model
from evostream.schemas.catalog import DRIFT, EVOLUTION_GROUP
from evostream.schemas.codec import RecordCodec

log = logging.getLogger("evostream.evolution")
GROUP = EVOLUTION_GROUP
SHUTDOWN_S = 10.0
"""The longest a commit of evo.drift's offsets, and the consumer's close on the way out, wait for the broker (a
cycle in progress is not interrupted: a stop is seen between cycles)."""


@dataclass(frozen=True)
class Outcome:
    trigger: str
    version: str | None
    """The candidate registered (None: skipped, or nothing built)."""
    passed: bool
    skipped: bool = False
    result: CycleResult | None = None


class EvolutionConsumer:
    """Cycles for one registry model; ``gov`` is the evolution actor's signer (a proposer)."""

    def __init__(
        self,
        server: str,
        gov: Governance,
        model: str,
        store: ArtifactStore,
        workdir: Path,
        cfg: CycleConfig,
        risk_rate: RiskRate | None = None,
        progress: Callable[[str], None] = log.info,
    ) -> None:
        self.server, self.gov, self.model, self.store = server, gov, model, store
        self.workdir, self.cfg, self.risk_rate, self.progress = workdir, cfg, risk_rate, progress
        self.stop_event = threading.Event()

    def production(self) -> str | None:
        return self.gov.state().registry.production(self.model)

    def parent(self) -> tuple[LoadedModel, Path]:
        """The production version as the verified log names it, loaded from its re-hashed artifact."""
        registry = self.gov.state().registry
        version = registry.production(self.model)
        if version is None:
            raise EvolutionError(
                f"no production version of {self.model} in the governance log: serve it governed "
                "first (`make run`, `evostream demo` or `evostream serve --governed`)"
            )
        path = self.store.open(registry.version(self.model, version)["artifact_sha256"])
        lm = load_model(str(path), device="cpu")
        lm.name, lm.version = self.model, version
        return lm, path

    def cycle(self, trigger: str, propose_it: bool = True) -> Outcome:
        """One cycle for ``trigger``, unless the log shows it handled."""
        if propose_it and trigger in handled_triggers(self.gov, self.model):
            self.progress(f"evolution: {trigger} was handled before: skipped")
            return Outcome(trigger, None, False, skipped=True)
        parent, parent_dir = self.parent()
        self.progress(f"evolution: cycle for {trigger} on {parent.version}")
        observed = read_observed(self.server, parent.version, progress=self.progress)
        work = self.workdir / parent.version.replace("/", "_")
        work.mkdir(parents=True, exist_ok=True)
        result = run_cycle(parent, parent_dir, observed, self.store, work, self.cfg, self.risk_rate, self.progress)
        if not propose_it:
            return Outcome(trigger, None, result.chosen is not None, result=result)
        version, passed = propose(self.gov, self.model, result, self.cfg, trigger, self.progress)
        return Outcome(trigger, version, passed, result=result)

    def run(self, every_s: int = 0, on_cycle: Callable[[Outcome], None] = lambda _: None) -> None:
        """Follow ``evo.drift`` (and the clock, when ``every_s``) until ``stop_event``; offsets are committed after
        the cycles their reports started."""
        codec = RecordCodec("DriftReport")
        last = time.monotonic()
        consumer = EventConsumer(self.server, GROUP, [DRIFT], {"enable.auto.commit": False})
        try:
            while not self.stop_event.is_set():
                msgs = consumer.poll_batch(100, 1.0)
                fired = {
                    rep["model_version"]
                    for rep in (codec.decode_or_skip(m.value()) for m in msgs)
                    if rep is not None and rep["fired"]
                }
                production = self.production() if fired else None  # one replay of the log's tail per batch
                triggers = [f"drift:{production}"] if production in fired else []
                if every_s and time.monotonic() - last >= every_s:
                    last = time.monotonic()
                    triggers.append(f"schedule:{int(time.time()) // every_s}")
                for trigger in dict.fromkeys(triggers):
                    if self.stop_event.is_set():
                        return  # uncommitted: the next run reads these reports again
                    on_cycle(self.cycle(trigger))
                if msgs:
                    try:
                        consumer.commit(timeout_s=SHUTDOWN_S)
                    except ConsumeError as e:  # read again after a restart: a trigger handled is skipped then
                        log.warning("evolution: %s; committed with a later batch", e)
        finally:
            consumer.close(SHUTDOWN_S)
