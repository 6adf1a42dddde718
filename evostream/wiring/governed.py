"""Serving what governance decided: the genesis of an empty log (the embedded default model registered, validated,
approved and promoted), and a model source for the inference service that follows ``evo.governance`` and hands over
the production version's artifact, verified, whenever a promotion or a rollback changes it.

Here, in the wiring layer shared by the CLI and the API, because it wires three parts that never import each
other: the governance log (``consumers``), the artifact store (core) and the inference producer (``producers``)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from evostream.consumers.governance.anchor import advance_anchor
from evostream.consumers.governance.log import GovernanceLog
from evostream.consumers.governance.projection import Registry, replay
from evostream.consumers.governance.service import Governance, init, key_path, load_actor, recovery_hint
from evostream.core.artifacts import ArtifactStore
from evostream.core.errors import GovernanceError, TamperError
from evostream.core.settings import Settings
from evostream.views.governance import anchor_file, anchored, checkpoints_path

log = logging.getLogger("evostream.governed")

GENESIS_EVAL_PER_TASK = 20
"""Held-out prompts per task that the genesis validation measures: a sample, since the whole held-out suite is too
slow for a first start on a small CPU machine (docs/benchmarks.md#figures-behind-design-decisions)."""
GENESIS_GATE = 0.9
"""The exact-match accuracy each task must reach for the embedded model to pass its genesis validation."""


def measure_on_suite(path: Path, per_task: int, threshold: float) -> tuple[bool, dict[str, Any], dict[str, float]]:
    """The model at ``path`` on ``per_task`` held-out prompts per task: (passed, gate per task, accuracy per task)."""
    from evostream.models.loading import load_model
    from evostream.models.suite.evaluate import eval_set, evaluate

    lm = load_model(str(path), device="cpu")
    acc = evaluate(lm.model, lm.tokenizer, eval_set(per_task))
    gates = {
        f"accuracy:{task}": {"value": a, "threshold": threshold, "passed": a >= threshold}
        for task, a in acc.items()
        if task != "mean"
    }
    return all(g["passed"] for g in gates.values()), gates, acc


def _verified(registry: Registry, findings: list[Any]) -> Registry:
    if findings:
        f = findings[0]
        raise TamperError(
            f"the governance log failed verification at offset {f.offset} (sequence {f.sequence}): "
            f"{f.kind}: {f.detail}; nothing is served from it (`evostream replay --verify`){recovery_hint(f)}"
        )
    return registry


def _anchored_replay(settings: Settings, glog: GovernanceLog) -> Registry:
    """The whole log replayed and verified, and checked against this machine's anchors (its head file and signed
    checkpoints: a log cut short or recreated is refused); the head file then moves forward."""
    items = glog.items()
    registry, findings = replay(items)
    return _verified(registry, anchored(settings, registry, findings, items))


def caught_up(glog: GovernanceLog, registry: Registry, anchor: Path) -> Registry:
    """``registry`` with the log's events after its offset folded in, verified, and this machine's head file moved
    forward (a follower's poll); the same registry when nothing new came."""
    tail = glog.items(from_offset=registry.offset + 1)
    if not tail:
        return registry
    folded, findings = replay(tail, start=registry)
    if findings:  # a void may reach back before the tail (a forced one): judge the whole log
        folded, findings = replay(glog.items())
    folded = _verified(folded, findings)
    advance_anchor(anchor, folded)
    return folded


def enrolled_signer(
    settings: Settings, server: str, me: str, role: str, reason: str, no_admin: str, say: Callable[[str], None]
) -> Governance:
    """A service's own signer ``me``. On a machine that holds an admin key and none for ``me`` yet, its key is made
    here and enrolled by that admin with ``role``, once (a key whose enrolment failed is removed); with neither key,
    a GovernanceError saying ``no_admin``; a key lost for an actor still enrolled is an error too."""
    from evostream.consumers.governance.keys import ActorKey

    keys = settings.governance_dir / "keys"
    checkpoints, anchor = checkpoints_path(settings), anchor_file(settings)
    glog = GovernanceLog(server, topic=settings.governance_topic)
    if not key_path(keys, me).exists():
        if not key_path(keys, settings.governance_actor).exists():
            raise GovernanceError(no_admin)
        admin = load_actor(glog, keys, settings.governance_actor, checkpoints=checkpoints, anchor=anchor)
        enrolled = admin.state().registry.actors.get(me)
        if enrolled is not None and enrolled["revoked_seq"] is None:
            raise GovernanceError(
                f"{me!r} is enrolled, but its key is not in {keys}: copy it there, or revoke the actor and run again"
            )
        key = ActorKey.generate()
        key.save(key_path(keys, me))
        try:
            admin.enroll(me, key.public_hex, key.key_id, [role], reason=reason)
        except Exception:
            key_path(keys, me).unlink()  # not enrolled: the key must not linger as if it were
            raise
        say(f"governance: {settings.governance_actor} enrolled {me} as {role} (key {key.key_id})")
    return load_actor(glog, keys, me, checkpoints=checkpoints, anchor=anchor)


def default_version() -> str:
    """The embedded model's version id, as the loader names it (``name@<12 hex of its weights' sha256>``)."""
    from evostream.models.default_model import MODEL_ID, WEIGHTS_DIR
    from evostream.models.loading import weights_digest

    return f"{MODEL_ID}@{weights_digest(WEIGHTS_DIR)}"


def validate_default(
    path: Path, per_task: int = GENESIS_EVAL_PER_TASK
) -> tuple[bool, dict[str, Any], dict[str, float]]:
    """Measure the model at ``path`` on the held-out suite: (passed, gates, accuracy per task)."""
    return measure_on_suite(path, per_task, GENESIS_GATE)


def ensure_genesis(settings: Settings, server: str, say: Callable[[str], None]) -> str:
    """The production version of the embedded default model. On an empty log: the genesis (first admin key and
    policy, then the default model stored, registered, validated on the held-out suite, approved and promoted)."""
    from evostream.models.default_model import MODEL_ID, WEIGHTS_DIR

    store = ArtifactStore(settings.artifacts_dir)
    keys = settings.governance_dir / "keys"
    with GovernanceLog(server, topic=settings.governance_topic) as glog:
        registry = _anchored_replay(settings, glog)
        if registry.head_sequence < 0:  # an admin key left by an earlier log (a new broker, same home) is reused
            gov, path = init(
                glog,
                keys,
                settings.governance_actor,
                checkpoints=checkpoints_path(settings),
                reuse_key=True,
                anchor=anchor_file(settings),
            )
            say(
                f"governance: empty log, genesis: admin {gov.actor} enrolled (key {gov.key.key_id}, saved 0600 at "
                f"{path})"
            )
        elif registry.production(MODEL_ID) is not None:
            version = str(registry.production(MODEL_ID))
            _ensure_default_artifact(store, registry, MODEL_ID, version, WEIGHTS_DIR)
            return version
        elif not key_path(keys, settings.governance_actor).exists():
            raise GovernanceError(
                f"the governance log has no production version of {MODEL_ID}, and there is no key "
                f"for {settings.governance_actor!r} in {keys} to register one"
            )
        else:
            gov = load_actor(
                glog,
                keys,
                settings.governance_actor,
                checkpoints=checkpoints_path(settings),
                anchor=anchor_file(settings),
            )
        return _register_default(gov, store, MODEL_ID, WEIGHTS_DIR, say)


def _ensure_default_artifact(store: ArtifactStore, registry: Registry, model: str, version: str, weights: Path) -> None:
    """A log made elsewhere may name the embedded model's artifact while this machine's store lacks it: the store is
    content-addressed, so putting the shipped weights restores exactly that artifact or a different one (not used)."""
    sha = registry.version(model, version)["artifact_sha256"]
    if not store.contains(sha) and version == default_version():
        store.put_dir(weights)


def _register_default(
    gov: Governance, store: ArtifactStore, model: str, weights: Path, say: Callable[[str], None]
) -> str:
    version = default_version()
    ref = store.put_dir(weights)
    training = json.loads((weights / "training.json").read_text()) if (weights / "training.json").exists() else {}
    say(f"governance: validating {version} on {GENESIS_EVAL_PER_TASK} held-out prompts per task")
    passed, gates, acc = validate_default(store.open(ref.sha256))
    size = sum(f.stat().st_size for f in weights.iterdir() if f.is_file())
    metrics = {
        "parameters": training.get("parameters"),
        "bytes_on_disk": size,
        "task_accuracy": acc,
        "training_held_out_accuracy": training.get("held_out_accuracy"),
    }
    gov.register(
        model,
        version,
        artifact_uri=ref.uri,
        artifact_sha256=ref.sha256,
        metrics=metrics,
        reason="genesis: the embedded default model",
    )
    gov.validated(model, version, passed, gates, reason="genesis: held-out task suite")
    if not passed:
        raise GovernanceError(f"the embedded model failed its genesis validation: {gates}")
    _approve_alone(gov, model, version)
    gov.promote(model, version, stage="production", reason="genesis: the embedded default model")
    say(
        f"governance: {version} registered ({ref.uri[:19]}...), validated (mean accuracy {acc['mean']:.2f}), "
        f"approved and promoted to production"
    )
    return version


def _approve_alone(gov: Governance, model: str, version: str) -> None:
    """The genesis approval: the first admin registered the embedded model and is the only one to approve it. Under
    four eyes it says so in the log, switching the rule off for this one approval and on again."""
    from evostream.consumers.governance.policy import rule

    if not rule(gov.state().registry.policy, "four_eyes"):
        gov.approve(model, version, "production", reason="genesis")
        return
    gov.set_policy({"four_eyes": False}, reason="genesis: the first admin alone approves the embedded model")
    gov.approve(model, version, "production", reason="genesis")
    gov.set_policy({"four_eyes": True}, reason="genesis: four eyes from here on")


class GovernedModel:
    """A ``producers.swap.ModelSource`` that serves the production version of ``model`` as the governance log says.

    It starts from a full verified replay (an unsigned snapshot could name any version), then a thread folds new
    governance events every ``poll_s``; when production changes (a promotion or a rollback) it
    loads the new version's artifact from the store (its bytes re-hashed first: a mismatch is refused, never
    served) and hands it over; the service swaps between batches."""

    def __init__(
        self,
        server: str,
        settings: Settings,
        model: str,
        poll_s: float = 1.0,
        load: Callable[[Path, str], Any] | None = None,
    ) -> None:
        from evostream.producers.swap import ModelSlot, ServingModel, check_servable

        self.server = server
        self.model = model
        self.poll_s = poll_s
        self.store = ArtifactStore(settings.artifacts_dir)
        self._load = load or _load_artifact
        self._log = GovernanceLog(server, topic=settings.governance_topic)
        # a full verified replay, never a snapshot: snapshots are not signed, and what serves must be proven
        self._anchor = anchor_file(settings)
        self.registry = _anchored_replay(settings, self._log)
        version = self.registry.production(model)
        if version is None:
            raise GovernanceError(f"no production version of {model} in the governance log: promote one first")
        first = self._loader(version)()  # a first version that cannot load or be instrumented stops the start, loudly
        check_servable(first)
        self._slot = ModelSlot(ServingModel(version, first))
        self.stop_event = threading.Event()
        self.error: Exception | None = None
        self._thread = threading.Thread(target=self._follow, name="governance-follower", daemon=True)
        self._thread.start()

    def current(self) -> Any:
        return self._slot.current()

    def _loader(self, version: str) -> Callable[[], Any]:
        """Loads ``version``'s artifact, its bytes re-hashed first (ArtifactError if any byte differs)."""
        sha256 = self.registry.version(self.model, version)["artifact_sha256"]

        def load() -> Any:
            loaded = self._load(self.store.open(sha256), version)
            loaded.name, loaded.version = self.model, version
            return loaded

        return load

    def _follow(self) -> None:
        while not self.stop_event.wait(self.poll_s):
            try:
                self.registry = caught_up(self._log, self.registry, self._anchor)
                version = self.registry.production(self.model)
                if version is not None and version != self.current().version:  # also retries a refused version
                    log.info("governance: production of %s is now %s: loading it", self.model, version)
                    result = self._slot.swap(version, self._loader(version))  # loaded and checked here, not serving
                    if not result.accepted:
                        raise GovernanceError(f"cannot serve {version}: {result.error}")
                self.error = None
            except Exception as e:  # the old version keeps serving; retried every poll, the error kept for callers
                if str(e) != str(self.error):
                    log.error("governance follower: %s (still serving %s; retrying)", e, self.current().version)
                self.error = e

    def close(self) -> None:
        self.stop_event.set()
        self._thread.join(10)
        self._log.close()


def _load_artifact(path: Path, version: str) -> Any:
    from evostream.models.loading import load_model

    return load_model(str(path))


def load_governed_version(
    server: str, settings: Settings, version: str, load: Callable[[Path, str], Any] | None = None
) -> Any:
    """A registered version (of whichever model holds it) loaded from its artifact, its bytes re-hashed first, as
    the governance log, verified and anchored, records it: a route's ``governed:<version>`` reference."""
    with GovernanceLog(server, topic=settings.governance_topic) as glog:
        registry = _anchored_replay(settings, glog)
    owners = [name for name, model in registry.models.items() if version in model["versions"]]
    if not owners:
        raise GovernanceError(
            f"no model in the governance log has a version {version!r} (`evostream registry` lists them)"
        )
    model = owners[0]
    sha256 = registry.version(model, version)["artifact_sha256"]
    loaded = (load or _load_artifact)(ArtifactStore(settings.artifacts_dir).open(sha256), version)
    loaded.name, loaded.version = model, version
    return loaded
