"""``serve --governed`` during progressive delivery: a deployment source that follows ``evo.governance``.

Production is the model's production version, as ``wiring.governed.GovernedModel`` serves it. Beside it
(``wanted``): the running rollout's candidate at the rollout's weight, with the plan's ``shadow_share`` of the
requests it does not answer mirrored to it (its shadow phase is weight 0); outside a rollout, the staging version,
mirrored at the policy's ``shadow_share`` (0 unless set: none). The service reads the deployment once per batch
(``producers.deployment``), so a step's new weight applies from the next batch.

Every version is loaded on the follower's thread, never the serving one: its artifact's bytes re-hashed first (an
altered artifact is refused, never served) and checked servable. A version stays loaded while the deployment names it,
and only then: an abort drops the candidate and every request goes back to production with nothing loaded; a
completed rollout makes the candidate already loaded production (the service keeps its generator). A candidate that
cannot be loaded leaves production alone (said in the log, tried again every poll); a production version that cannot
be loaded leaves the deployment as it was (as GovernedModel does).

Here, in the wiring layer, because it joins the governance log (``consumers``), the artifact store (core) and the
inference producer (``producers``)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evostream.consumers.governance.log import GovernanceLog
from evostream.consumers.governance.policy import rule
from evostream.consumers.governance.projection import Registry
from evostream.core.artifacts import ArtifactStore
from evostream.core.errors import GovernanceError
from evostream.core.settings import Settings
from evostream.models.loading import LoadedModel
from evostream.producers.deployment import Deployment
from evostream.producers.swap import ServingModel, check_servable
from evostream.views.governance import anchor_file
from evostream.wiring.governed import _anchored_replay, _load_artifact, caught_up

log = logging.getLogger("evostream.governed")


@dataclass(frozen=True)
class Wanted:
    """What the governance log says a model's service serves: versions by name, before anything is loaded."""

    production: str
    candidate: str | None = None
    weight: int = 0
    shadow_share: float = 0.0
    rollout_id: str | None = None


def wanted(registry: Registry, model: str) -> Wanted | None:
    """What ``model``'s service serves by ``registry``: production and the running rollout's candidate (its weight;
    the plan's shadow share of the rest, none at 100%), else the staging version under the policy's
    ``shadow_share``; None when the model has no production version."""
    production = registry.production(model)
    if production is None:
        return None
    r = registry.active_rollout(model)
    if r is not None and r["version"] != production:
        weight = int(r["weight"])
        share = float(r["plan"].get("shadow_share", 0.0)) if weight < 100 else 0.0
        return Wanted(production, r["version"], weight, share, r["rollout_id"])
    staging = registry.staging(model)
    share = float(rule(registry.policy, "shadow_share") or 0.0)
    if staging is not None and staging != production and share > 0:
        return Wanted(production, staging, 0, share)
    return Wanted(production)


class GovernedDeployment:
    """A ``producers.deployment.DeploymentSource`` (and a ``ModelSource`` of its production) that serves what the
    governance log says about ``model``: production, and a rollout's candidate or the staging version beside it.

    It starts from a full verified replay (an unsigned snapshot could name any version) and loads production before
    returning (a first version that cannot be loaded stops the start, loudly); then a thread folds new governance
    events every ``poll_s`` and loads what the deployment comes to name."""

    def __init__(
        self,
        server: str,
        settings: Settings,
        model: str,
        poll_s: float = 1.0,
        load: Callable[[Path, str], Any] | None = None,
        validate: Callable[[LoadedModel], None] = check_servable,
    ) -> None:
        self.server = server
        self.model = model
        self.poll_s = poll_s
        self.store = ArtifactStore(settings.artifacts_dir)
        self._load = load or _load_artifact
        self._validate = validate
        self._log = GovernanceLog(server, topic=settings.governance_topic)
        self._anchor = anchor_file(settings)
        self.registry = _anchored_replay(settings, self._log)
        self._models: dict[str, ServingModel] = {}
        """The versions loaded, by name: those the deployment names, and only those."""
        want = wanted(self.registry, model)
        if want is None:
            raise GovernanceError(f"no production version of {model} in the governance log: promote one first")
        self._deployment = Deployment(self._serving(want.production))
        self.error: Exception | None = None
        """Why the last poll could not serve what the log says (None once it does)."""
        self._update()  # a rollout running at the start: its candidate from the first batch
        self.stop_event = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="governance-follower", daemon=True)
        self._thread.start()

    def deployment(self) -> Deployment:
        return self._deployment  # one reference read: the serving thread never waits for a load in progress

    def current(self) -> ServingModel:
        return self._deployment.production

    def _serving(self, version: str) -> ServingModel:
        """``version`` loaded (once while it is served): its artifact re-hashed (ArtifactError if any byte differs),
        then checked servable."""
        found = self._models.get(version)
        if found is not None:
            return found
        sha256 = self.registry.version(self.model, version)["artifact_sha256"]
        t0 = time.perf_counter()
        loaded = self._load(self.store.open(sha256), version)
        loaded.name, loaded.version = self.model, version
        self._validate(loaded)
        log.info("governance: %s of %s loaded in %.1f s", version, self.model, time.perf_counter() - t0)
        served = self._models[version] = ServingModel(version, loaded)
        return served

    def _update(self) -> None:
        """Serve what the registry says from the next batch on; what cannot be loaded is said once and retried."""
        want = wanted(self.registry, self.model)
        if want is None:
            raise GovernanceError(f"{self.model} has no production version any more")
        production = self._serving(want.production)  # raises: the deployment stays as it was
        candidate = None
        if want.candidate is not None:
            try:
                candidate = self._serving(want.candidate)
            except Exception as e:  # production serves alone meanwhile; retried every poll
                problem = f"cannot load candidate {want.candidate}: {type(e).__name__}: {e}; production serves alone"
                if str(self.error) != problem:
                    log.error("governance: %s", problem)
                self.error = GovernanceError(problem)
        dep = (
            Deployment(production, candidate, want.weight, want.shadow_share, want.rollout_id)
            if candidate is not None
            else Deployment(production)
        )
        if not _same(dep, self._deployment):
            log.info("governance: serving %s", dep.describe())
            self._deployment = dep
        for version in set(self._models) - {want.production, want.candidate}:
            del self._models[version]  # the service closes its generator once it stops serving it
        if candidate is not None or want.candidate is None:
            self.error = None

    def _follow(self) -> None:
        while not self.stop_event.wait(self.poll_s):
            try:
                self.registry = caught_up(self._log, self.registry, self._anchor)
                self._update()
            except Exception as e:  # what serves keeps serving; retried every poll, the error kept for callers
                if str(e) != str(self.error):
                    log.error("governance follower: %s (still serving %s; retrying)", e, self._deployment.describe())
                self.error = e

    def close(self) -> None:
        self.stop_event.set()
        self._thread.join(10)
        self._log.close()


def _same(a: Deployment, b: Deployment) -> bool:
    """The same deployment: the same loaded models (by identity) at the same split."""
    return (
        a.production is b.production
        and a.candidate is b.candidate
        and (a.weight, a.shadow_share, a.rollout_id) == (b.weight, b.shadow_share, b.rollout_id)
    )
