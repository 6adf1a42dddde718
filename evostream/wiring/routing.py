"""A route governed like a model: its routing policy registered, its independence level moved by governance events,
and the Router the inference service routes with, following the log.

``register_route`` stores a ``RoutePolicy`` in the artifact store and registers it as a version of ``route/<name>``
(like ``wiring.risk.register_probe`` does a risk probe), recording what replay needs to judge level events without
reading files: the probe the policy reads (which must be a registered ``risk/<family>`` version: a policy's own gain
probe, fitted by ``evostream route train`` and found in the store, is registered here first as a version of
``risk/<family>-route``) and each level's
evidence exactly as the artifact holds it. ``propose_level`` reads the evidence from the artifact (re-hashed) and
refuses a caller's evidence that differs; replay then refuses a proposal whose evidence is not the registration's,
and ``GovernedRoute`` checks the artifact once more before it serves a level (``consumers/governance/levels.py``):
the evidence approved is the artifact's, the probe the artifact reads is the one its registration names and a
registered ``risk/<family>`` version, and the self model versions it was certified on are the registration's.

A level is evidence about one self model: the versions whose answers certified it (``trained_on["self_versions"]``,
written by ``wiring.route_train``, copied into the registration's ``operator_params``). ``GovernedRoute`` serves a
level above 0 only while the service serves one of those versions; for any other (a newly promoted self model, a
policy registered before versions were recorded) it routes at level 0, the reference answering everything, and says
so in the log once, until a policy certified on the served version is approved.

``GovernedRoute(server, settings, name)`` is what the inference service reads its router from: ``current(served)``
(or calling it) gives the Router at the level in force for the self model version ``served``, or None while the route
has no level (no routing: the served model answers everything)."""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from evostream.consumers.governance.anchor import advance_anchor
from evostream.consumers.governance.events import GovEvent
from evostream.consumers.governance.levels import RISK_PREFIX, route_model
from evostream.consumers.governance.log import GovernanceLog
from evostream.consumers.governance.projection import Registry, replay
from evostream.consumers.governance.service import Governance, recovery_hint
from evostream.consumers.governance.shapes import RouteState
from evostream.core.artifacts import ArtifactStore
from evostream.core.errors import GovernanceError, TamperError
from evostream.core.settings import Settings
from evostream.models.risk_probe import RiskProbe
from evostream.routing.policy import GAIN_LABEL, LADDER, RoutePolicy, Router, RoutingError
from evostream.views.governance import anchor_file, anchored
from evostream.wiring.risk import load_probe, probe_model

log = logging.getLogger("evostream.routing")

ARTIFACT_FILE = "policy.json"
OPERATOR = "route-register"
GAIN_OPERATOR = "route-train"


def level_evidence(policy: RoutePolicy) -> dict[str, dict[str, Any]]:
    """level (as a string) -> its evidence, for each level of ``policy`` above 0 whose calibration left evidence:
    what the registration records for replay to judge proposals by."""
    return {str(g.level): dict(g.evidence) for g in policy.gates if g.level >= 1 and g.evidence}


def load_policy(store: ArtifactStore, sha256: str) -> RoutePolicy:
    """A stored routing policy, its bytes re-hashed first (ArtifactError if any differ)."""
    return RoutePolicy.from_bytes((store.open(sha256) / ARTIFACT_FILE).read_bytes())


def probe_version(registry: Registry, sha256: str) -> str | None:
    """The registered ``risk/<family>`` version whose artifact is ``sha256``, or None."""
    for name, model in registry.models.items():
        if name.startswith(RISK_PREFIX):
            for version, state in model["versions"].items():
                if state["artifact_sha256"] == sha256:
                    return version
    return None


def gain_probe_model(family: str) -> str:
    """The registry model whose versions are the gain probes of ``family``'s routes (a ``risk/`` model, never
    promoted: the risk scores keep reading ``risk/<family>``)."""
    return probe_model(f"{family}-route")


def register_gain_probe(gov: Governance, store: ArtifactStore, sha256: str) -> str | None:
    """Register the stored probe ``sha256`` as a version of ``risk/<family>-route`` when it is a route's gain probe
    (``trained_on["label"]`` is ``GAIN_LABEL``); its version, or None when it is missing here or no gain probe."""
    if not store.contains(sha256):
        return None
    probe = load_probe(store, sha256)
    if probe.trained_on.get("label") != GAIN_LABEL:
        return None
    model = gain_probe_model(probe.family)
    version = f"{model}@{sha256[:12]}"
    known = gov.state().registry.models.get(model)
    if known is not None and version in known["versions"]:
        return version
    ref = store.put_dir(store.open(sha256))  # stored already: the reference of the same bytes
    gov.register(
        model,
        version,
        artifact_uri=ref.uri,
        artifact_sha256=ref.sha256,
        operator=GAIN_OPERATOR,
        operator_params=dict(probe.trained_on),
        metrics={},
        reason="a routing policy's own gain probe (the reference wins), registered with its policy",
    )
    return version


def self_versions(policy: RoutePolicy) -> list[str]:
    """The self model versions the policy's evidence was measured on (none for a policy trained before they were
    recorded: its levels serve no self model)."""
    versions = policy.trained_on.get("self_versions", [])
    return sorted({str(v) for v in versions}) if isinstance(versions, list) else []


def register_route(gov: Governance, store: ArtifactStore, policy: RoutePolicy, name: str, reason: str = "") -> str:
    """Store ``policy`` and register it as a version of ``route/<name>``; its version (the same bytes again: the
    version registered before). Refused: a policy made for another route, a level outside the ladder, a probe that is
    no registered risk probe (nor a gain probe in this machine's store, registered then) or is missing from this
    machine's store."""
    if policy.route != name:
        raise GovernanceError(f"the policy was made for route {policy.route!r}, not {name!r}")
    outside = sorted(g.level for g in policy.gates if not 1 <= g.level < len(LADDER))
    if outside:
        raise GovernanceError(
            f"the policy has gates for levels {outside}: the ladder's levels are 1..{len(LADDER) - 1}"
        )
    registry = gov.state().registry
    probe: str | None = None
    if policy.probe_sha256:
        probe = probe_version(registry, policy.probe_sha256) or register_gain_probe(gov, store, policy.probe_sha256)
        if probe is None:
            raise GovernanceError(
                f"the policy reads probe {policy.probe_sha256[:12]}..., which is no registered risk/<family> "
                "version nor a gain probe in this store: register it first (`evostream risk train`)"
            )
        load_probe(store, policy.probe_sha256)  # present here and intact, or ArtifactError
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / ARTIFACT_FILE).write_bytes(policy.to_bytes())
        ref = store.put_dir(Path(tmp))
    model = route_model(name)
    version = f"{model}@{ref.sha256[:12]}"
    known = registry.models.get(model)
    if known is not None and version in known["versions"]:
        return version
    gov.register(
        model,
        version,
        artifact_uri=ref.uri,
        artifact_sha256=ref.sha256,
        operator=OPERATOR,
        operator_params={
            "route": name,
            "probe_sha256": policy.probe_sha256,
            "probe_version": probe,
            "self_versions": self_versions(policy),
            "trained_on": dict(policy.trained_on),
        },
        metrics={"levels": level_evidence(policy)},
        reason=reason or "routing policy registered",
    )
    return version


def newest_version(registry: Registry, name: str) -> str:
    """The route's most recently registered policy version (GovernanceError when it has none)."""
    model = registry.models.get(route_model(name))
    if model is None or not model["versions"]:
        raise GovernanceError(f"route {name!r} has no registered policy: `evostream route register` one first")
    return max(model["versions"].values(), key=lambda v: v["sequence"])["version"]


def artifact_evidence(store: ArtifactStore, registry: Registry, name: str, version: str, level: int) -> dict[str, Any]:
    """The evidence of ``level`` in the policy artifact of ``version``, its bytes re-hashed first."""
    sha = registry.version(route_model(name), version)["artifact_sha256"]
    try:
        return dict(load_policy(store, sha).gate(level).evidence)
    except RoutingError as e:
        raise GovernanceError(f"{version}: {e}") from e


def propose_level(
    gov: Governance,
    store: ArtifactStore,
    name: str,
    level: int,
    *,
    version: str | None = None,
    evidence: Mapping[str, Any] | None = None,
    reason: str = "",
) -> GovEvent:
    """Propose route ``name`` at ``level`` on policy ``version`` (default: its newest), carrying the level's evidence
    read from the policy artifact; a caller's ``evidence`` that differs from the artifact's is refused."""
    registry = gov.state().registry
    version = version or newest_version(registry, name)
    held = artifact_evidence(store, registry, name, version, level)
    if evidence is not None and dict(evidence) != held:
        raise GovernanceError(
            f"the evidence given for level {level} differs from {version}'s policy artifact (artifact: {held}; "
            f"given: {dict(evidence)}): a level carries its artifact's evidence, nothing else"
        )
    if not held:
        raise GovernanceError(f"{version}'s policy artifact holds no evidence for level {level}: calibrate it first")
    return gov.propose_level(route_model(name), version, level, held, reason)


def approve_level(gov: Governance, name: str, level: int, reason: str = "") -> GovEvent:
    """Approve the route's pending proposal of ``level``: the level takes effect."""
    route = gov.state().registry.route(name)
    pending = route["proposal"] if route else None
    if pending is None:
        raise GovernanceError(f"route {name!r} has no pending level proposal")
    return gov.approve_level(route_model(name), pending["version"], level, reason)


def lower_level(gov: Governance, name: str, level: int, reason: str) -> GovEvent:
    """Move the route down to ``level`` on its policy in force, at once."""
    if not reason.strip():
        raise GovernanceError("lowering a level needs a reason (--reason): it stays in the log")
    return gov.lower_level(route_model(name), level, reason)


class LoadedPolicy:
    """One policy version as loaded from the store: the policy, the probe it reads and its registration."""

    def __init__(self, store: ArtifactStore, registry: Registry, name: str, version: str) -> None:
        self.version = version
        self.registration = registry.version(route_model(name), version)
        sha = self.registration["artifact_sha256"]
        self.sha256 = sha
        self.policy = load_policy(store, sha)
        _check_probe(self, registry)  # before the probe is read: only the registered one is
        self.probe: RiskProbe | None = load_probe(store, self.policy.probe_sha256) if self.policy.probe_sha256 else None


def _check_probe(loaded: LoadedPolicy, registry: Registry) -> None:
    """The probe the artifact reads is the one its registration names, and a registered risk probe."""
    sha = loaded.policy.probe_sha256
    named = loaded.registration["operator_params"].get("probe_sha256")
    if sha != named:
        raise GovernanceError(
            f"route {loaded.policy.route!r}: policy {loaded.version}'s artifact reads probe {sha[:12] or 'none'}, "
            f"its registration names {str(named)[:12] or 'none'}: its registration does not describe its artifact; "
            "not served"
        )
    if sha and probe_version(registry, sha) is None:
        raise GovernanceError(
            f"route {loaded.policy.route!r}: policy {loaded.version} reads probe {sha[:12]}..., which is no "
            f"registered {RISK_PREFIX}<family> version; not served"
        )


def router_at(loaded: LoadedPolicy, route: RouteState, registry: Registry) -> Router:
    """The Router of a route's state, after checking that the artifact is what governance approved and registered:
    the level's evidence, the probe it reads (a registered risk probe), the self versions it was certified on."""
    level = int(route["level"] or 0)
    if level > 0 and dict(loaded.policy.gate(level).evidence) != route["evidence"]:
        raise GovernanceError(
            f"route {loaded.policy.route!r}: the evidence approved for level {level} is not what policy "
            f"{route['version']}'s artifact holds: its registration does not describe its artifact; not served"
        )
    _check_probe(loaded, registry)
    recorded = loaded.registration["operator_params"].get("self_versions", [])
    if recorded != self_versions(loaded.policy):
        raise GovernanceError(
            f"route {loaded.policy.route!r}: policy {loaded.version}'s artifact was certified on self versions "
            f"{self_versions(loaded.policy)}, its registration says {recorded}: its registration does not describe "
            "its artifact; not served"
        )
    return Router(loaded.policy, level, loaded.probe, policy_version=loaded.sha256)


def certified_for(loaded: LoadedPolicy, served: str) -> bool:
    """Whether the policy's levels were certified on the self model version ``served``."""
    return served in self_versions(loaded.policy)


class GovernedRoute:
    """Route ``name`` as the governance log says: ``current(served)`` is the Router at the level in force for the self
    model version ``served`` (None: no level, no routing; level 0 when the level was not certified on ``served``,
    said once in the log per policy, level and version). It starts from a full verified replay (checked against this
    machine's anchors), then a thread folds new governance events every ``poll_s``; a level or policy change builds
    a new Router (a new policy is loaded from the store, re-hashed), and ``current()`` hands it over at once. A
    change that cannot be served (an artifact missing or altered) keeps the Router in force and is kept in
    ``error``, retried every poll."""

    def __init__(self, server: str, settings: Settings, name: str, poll_s: float = 1.0) -> None:
        self.name = name
        self.poll_s = poll_s
        self.settings = settings
        self.store = ArtifactStore(settings.artifacts_dir)
        self._log = GovernanceLog(server, topic=settings.governance_topic)
        self._loaded: dict[str, LoadedPolicy] = {}
        self.error: Exception | None = None
        try:
            items = self._log.items()
            registry, findings = replay(items)
            self.registry = _verified(registry, anchored(settings, registry, findings, items))
            self._serving: tuple[str | None, int | None] = (None, None)
            self._routers: tuple[Router, Router, LoadedPolicy] | None = None
            """(the Router at the level in force, the same policy's at level 0, the policy): swapped whole."""
            self._said: set[tuple[str, int, str]] = set()
            self._sync()  # a route that cannot be served at the start stops the start, loudly
        except Exception:
            self._log.close()
            raise
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name=f"route-follower-{name}", daemon=True)
        self._thread.start()

    def current(self, served: str) -> Router | None:
        """The Router at the level in force for the self model version ``served``, or None while the route has no
        level; at level 0 (the reference answers everything) when the level was not certified on ``served``."""
        routers = self._routers
        if routers is None:
            return None
        router, nothing, loaded = routers
        if router.level == 0 or certified_for(loaded, served):
            return router
        said = (loaded.version, router.level, served)
        if said not in self._said:
            self._said.add(said)
            log.warning(
                "route %s: level %s of %s was certified on self model versions %s, not on %s, which is served: "
                "level 0 (the reference answers everything) until a policy certified on %s is approved",
                self.name,
                router.level,
                loaded.version,
                ", ".join(self_versions(loaded.policy)) or "(none recorded)",
                served,
                served,
            )
        return nothing

    __call__ = current

    @property
    def level(self) -> int | None:
        return self._serving[1]

    def _sync(self) -> None:
        route = self.registry.route(self.name)
        state = (route["version"], route["level"]) if route else (None, None)
        if route is None or state == self._serving:
            return
        version = str(route["version"])
        loaded = self._loaded.get(version)
        if loaded is None:
            loaded = LoadedPolicy(self.store, self.registry, self.name, version)
        router = router_at(loaded, route, self.registry)
        nothing = Router(loaded.policy, 0, loaded.probe, policy_version=loaded.sha256)
        self._loaded = {version: loaded}  # the policy in force only: a lowering reuses it, never the store
        self._routers, self._serving = (router, nothing, loaded), state
        log.info("route %s: level %s on %s", self.name, state[1], version)

    def _follow(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                tail = self._log.items(from_offset=self.registry.offset + 1)
                if tail:
                    registry, findings = replay(tail, start=self.registry)
                    if findings:  # a void may reach back before the tail (a forced one): judge the whole log
                        items = self._log.items()
                        registry, findings = replay(items)
                    self.registry = _verified(registry, findings)
                    advance_anchor(anchor_file(self.settings), self.registry)
                self._sync()
                self.error = None
            except Exception as e:  # the Router in force keeps routing; retried every poll, the error kept
                if str(e) != str(self.error):
                    log.error("route %s follower: %s (level %s stays in force; retrying)", self.name, e, self.level)
                self.error = e

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._log.close()


def _verified(registry: Registry, findings: list[Any]) -> Registry:
    if findings:
        f = findings[0]
        raise TamperError(
            f"the governance log failed verification at offset {f.offset} (sequence {f.sequence}): "
            f"{f.kind}: {f.detail}; no route is served from it (`evostream replay --verify`){recovery_hint(f)}"
        )
    return registry
