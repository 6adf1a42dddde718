"""Governed prompt templates, wired: a template version is an artifact in the store and a version of the registry
model ``template/<name>`` (its lineage in ModelRegistered's parent and operator fields, its held-out measurement in
the metrics and the ValidationCompleted); the co-evolution cycle that proposes variants for a low-scoring task and
accepts one only through the gate; the pointer's rollback; and the resolver the inference service renders requests
with (``GovernedTemplates``), following ``evo.governance``.

Scoring is the suite's: the held-out (eval) split of the template's task, each example's input rendered into the
template and answered greedily by the production version of the served model, exact match against the expected
answer (``models.suite.evaluate``). A cycle cuts the task's eval examples in two disjoint parts: the selection split
every variant is scored and the best one picked on, and the confirmation split only the picked one (and the current
version) is scored on, where its gain must hold again. The worked examples a variant may add come from the train
stream (which never holds an eval prompt), so no variant is scored on what it shows.

Here, in the wiring layer, because a cycle meets parts that never import each other: the governance log
(``consumers``), the artifact store (core), the suite and the model (``models``) and the pure templates (``prompts``).
"""

from __future__ import annotations

import itertools
import logging
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evostream.consumers.governance.events import GovEvent
from evostream.consumers.governance.log import GovernanceLog
from evostream.consumers.governance.projection import Registry, replay
from evostream.consumers.governance.service import Governance
from evostream.core.artifacts import ArtifactStore
from evostream.core.errors import ArtifactError, GovernanceError, PolicyViolationError, UnauthorizedError
from evostream.core.settings import Settings
from evostream.prompts.gate import MIN_GAIN, Confirmation, Verdict, best, confirm, judge
from evostream.prompts.template import (
    MODEL_PREFIX,
    Template,
    TemplateError,
    check,
    missing_markers,
    model_name,
    parse_ref,
    render,
    version_id,
    version_number,
)
from evostream.prompts.variants import Example, Variant, propose
from evostream.views.governance import anchored

log = logging.getLogger("evostream.templates")

ARTIFACT_FILE = "template.json"
CREATE = "template-create"
EVOLVE = "template-evolve"
HELD_OUT_PER_TASK = 100
"""Held-out examples of the task each version is scored on (a cycle: in each of its two splits): a gain of 0.05 is
then five more right answers."""
TRAIN_SEED = 0

Answer = Callable[[list[str]], list[str]]
"""The production model's greedy answers to prompts, in order."""


# --- the store and the registry ------------------------------------------------------------------------------------
def store_template(store: ArtifactStore, t: Template) -> tuple[str, str]:
    """Put ``t``'s canonical bytes in the store: (uri, sha256). The same content is the same artifact."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / ARTIFACT_FILE).write_bytes(t.to_bytes())
        ref = store.put_dir(Path(tmp))
    return ref.uri, ref.sha256


def load_template(store: ArtifactStore, sha256: str) -> Template:
    """A stored template, its bytes re-hashed first (ArtifactError if any differ)."""
    return Template.from_bytes((store.open(sha256) / ARTIFACT_FILE).read_bytes())


def min_gain(registry: Registry) -> float:
    """The gain the policy asks of a variant (``template_min_gain``; ``MIN_GAIN`` while the log never set it)."""
    return float(registry.policy.get("template_min_gain", MIN_GAIN))


def next_version(registry: Registry, name: str) -> str:
    """The id the next version of template ``name`` is registered under."""
    model = registry.models.get(model_name(name))
    numbers = [version_number(name, v) for v in (model["versions"] if model else {})]
    return version_id(name, 1 + max((n for n in numbers if n is not None), default=0))


def version_of_artifact(registry: Registry, name: str, sha256: str) -> str | None:
    """The version of template ``name`` already registered with artifact ``sha256``, or None."""
    model = registry.models.get(model_name(name))
    for version, state in (model["versions"] if model else {}).items():
        if state["artifact_sha256"] == sha256:
            return version
    return None


def base_version(registry: Registry, name: str) -> str | None:
    """What a new version of template ``name`` derives from: its production version, else its newest one."""
    model = registry.models.get(model_name(name))
    if model is None or not model["versions"]:
        return None
    return model["production"] or max(model["versions"].values(), key=lambda v: v["sequence"])["version"]


def template_names(registry: Registry) -> list[str]:
    return sorted(m[len(MODEL_PREFIX) :] for m in registry.models if m.startswith(MODEL_PREFIX))


def resolve(registry: Registry, ref: str) -> tuple[str, str]:
    """The version a request's ``ref`` names and its artifact: (version, sha256). TemplateError, saying what there
    is, when it names no template, no version of it, a template with no production version, or a version that has
    not passed its validation."""
    named = parse_ref(ref)
    model = registry.models.get(named.model)
    if model is None:
        return _unknown(registry, named.name)
    versions = model["versions"]
    if named.version is None:
        version = model["production"]
        if version is None:
            raise TemplateError(
                f"template {named.name!r} has no production version (versions: {', '.join(versions)}): approve and "
                f"promote one, or name a version ({named.name}@N)"
            )
    elif named.version not in versions:
        raise TemplateError(f"template {named.name!r} has no version {named.version} (versions: {', '.join(versions)})")
    else:
        version = named.version
    state = versions[version]
    validation = state["validation"]
    if validation is None or not validation["passed"]:
        raise TemplateError(f"template version {version} has not passed a validation: it does not serve")
    return version, state["artifact_sha256"]


def _unknown(registry: Registry, name: str) -> tuple[str, str]:
    known = ", ".join(template_names(registry)) or "none"
    raise TemplateError(f"unknown template {name!r} (templates: {known}; `evostream template list`)")


def promote_as_allowed(gov: Governance, model: str, version: str, reason: str) -> tuple[str, str]:
    """Promote a validated version to production if the policy lets this actor do it now (the same check every
    writer meets, before anything is written): (its stage, a note on what it still needs, or '')."""
    try:
        gov.promote(model, version, stage="production", reason=reason)
    except (PolicyViolationError, UnauthorizedError) as e:
        stage = gov.state().registry.version(model, version)["stage"]
        return stage, (
            f"{version} is {stage}, not production: {e}. Another approver runs `evostream approve {model} {version}`, "
            f"then `evostream promote {model} {version} --stage production`"
        )
    return "production", ""


# --- scoring ---------------------------------------------------------------------------------------------------------
def suite_input(prompt: str) -> str:
    """The input of a suite prompt (``<task>: <input>``): what a template's slot takes."""
    return prompt.split(": ", 1)[1]


def held_out(task: str, per_task: int) -> list[Example]:
    """The held-out (eval) examples of ``task``: what every version and variant is scored on."""
    from evostream.models.suite.evaluate import eval_set

    examples = [Example(suite_input(e.prompt), e.answer) for e in eval_set(per_task) if e.task == task]
    if not examples:
        from evostream.models.suite.tasks import TASKS

        raise TemplateError(f"unknown task {task!r} (the suite's tasks: {', '.join(t.name for t in TASKS)})")
    return examples


def splits(task: str, per_split: int) -> tuple[list[Example], list[Example]]:
    """A cycle's two disjoint held-out splits of ``task``: (selection, confirmation), ``per_split`` examples each, both
    from the suite's eval examples (the selection split is ``held_out(task, per_split)``, what ``create`` scores)."""
    from evostream.models.suite.evaluate import EVAL_PER_TASK

    if 2 * per_split > EVAL_PER_TASK:
        raise TemplateError(
            f"a cycle scores on two disjoint splits of the task's {EVAL_PER_TASK} held-out examples: at most "
            f"{EVAL_PER_TASK // 2} each, not {per_split}"
        )
    examples = held_out(task, 2 * per_split)
    return examples[:per_split], examples[per_split:]


def worked_examples(task: str, n: int = 2) -> list[Example]:
    """``n`` examples of ``task`` from the train stream (no held-out prompt among them): what a variant may show."""
    from evostream.models.suite.evaluate import eval_set
    from evostream.models.suite.tasks import training_stream

    stream = training_stream(TRAIN_SEED, frozenset(e.prompt for e in eval_set()))
    found = (e for e in itertools.islice(stream, 1000) if e.task == task)
    return [Example(suite_input(e.prompt), e.answer) for e in itertools.islice(found, n)]


def score(answer: Answer, t: Template, examples: Sequence[Example]) -> float:
    """Exact-match accuracy of the model's answers to ``examples`` rendered into ``t``."""
    answers = answer([render(t, e.input) for e in examples])
    return sum(a.strip() == e.answer for a, e in zip(answers, examples, strict=True)) / len(examples)


def production_answers(registry: Registry, store: ArtifactStore, model: str, device: str = "cpu") -> tuple[str, Answer]:
    """The production version of ``model`` (as the verified log names it, its artifact re-hashed), and its answers."""
    from evostream.models.loading import load_model
    from evostream.models.suite.evaluate import predict

    version = registry.production(model)
    if version is None:
        raise GovernanceError(
            f"no production version of {model} in the governance log: templates are scored with it, so serve it "
            "governed first (`evostream serve --governed`)"
        )
    lm = load_model(str(store.open(registry.version(model, version)["artifact_sha256"])), device=device)
    return version, lambda prompts: predict(lm.model, lm.tokenizer, prompts)


# --- creating --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Created:
    version: str
    stage: str
    score: float | None
    note: str


def create(
    gov: Governance,
    store: ArtifactStore,
    t: Template,
    answer: Answer | None = None,
    per_task: int = HELD_OUT_PER_TASK,
    scored_with: str | None = None,
    reason: str = "",
) -> Created:
    """Register ``t`` as the next version of its template: a new template, or a hand-made version of one that keeps
    every protected marker of the version it derives from (``base_version``; their markers stay protected). It is
    validated (well formed, markers kept; its held-out score recorded when it names a task and ``answer`` is given)
    and promoted as far as the policy lets this actor."""
    check(t)
    registry = gov.state().registry
    model = model_name(t.name)
    parent = base_version(registry, t.name)
    if parent is not None:
        protected = load_template(store, registry.version(model, parent)["artifact_sha256"]).markers
        lost = missing_markers(protected, t.text)
        if lost:
            raise TemplateError(
                f"template {t.name!r}: the text drops the protected marker(s) {', '.join(map(repr, lost))} of "
                f"{parent}: every version keeps them"
            )
        t = Template(t.name, t.text, tuple(dict.fromkeys(protected + t.markers)), t.task, parent)
    else:
        t = Template(t.name, t.text, t.markers, t.task, None)
    uri, sha = store_template(store, t)
    same = version_of_artifact(registry, t.name, sha)
    if same is not None:
        raise TemplateError(f"template {t.name!r}: this text is version {same} already")
    measured = score(answer, t, held_out(t.task, per_task)) if answer is not None and t.task else None
    metrics: dict[str, Any] = {"markers": list(t.markers), "task": t.task}
    if measured is not None:
        metrics |= {"held_out_accuracy": measured, "held_out_n": per_task, "scored_with": scored_with}
    version = next_version(registry, t.name)
    gov.register(
        model,
        version,
        artifact_uri=uri,
        artifact_sha256=sha,
        parent=parent,
        operator=CREATE,
        operator_params={"text": t.text},
        metrics=metrics,
        reason=reason or f"template {t.name} created",
    )
    gates = {"well_formed": {"passed": True}, "protected_markers": {"value": list(t.markers), "passed": True}}
    gov.validated(model, version, True, gates, reason="well formed, every protected marker kept")
    stage, note = promote_as_allowed(gov, model, version, reason or f"template {t.name} created")
    return Created(version, stage, measured, note)


# --- the co-evolution cycle ------------------------------------------------------------------------------------------
def rolled_back(events: Sequence[tuple[int, GovEvent]], model: str) -> dict[str, str]:
    """The versions of ``model`` that were production and were rolled back (a RolledBack's ``from_version``), each
    with the (latest) rollback's reason: what a cycle never promotes again (a person still can, by hand)."""
    return {
        str(ev.payload["from_version"]): ev.reason
        for _, ev in events
        if ev.model_name == model and ev.type == "RolledBack" and ev.payload.get("from_version")
    }


@dataclass(frozen=True)
class Skipped:
    """A variant a cycle did not score: it is ``version``, which was production and was rolled back (``reason``)."""

    variant: Variant
    version: str
    reason: str


@dataclass(frozen=True)
class Cycle:
    """One cycle: the production version and its selection score, each variant's verdict on the selection split, the
    selected variant's confirmation, and what was accepted."""

    name: str
    task: str
    current: str
    current_score: float
    held_out_n: int
    """Examples in each split (selection and confirmation)."""
    min_gain: float
    verdicts: list[Verdict]
    confirmation: Confirmation | None
    """The best variant that passed on the selection split, measured on the confirmation split (None: none passed)."""
    accepted: str | None
    """The version registered for the confirmed variant (None: every variant was refused)."""
    stage: str | None
    note: str
    skipped: tuple[Skipped, ...] = ()
    """Variants not scored: each is a version that was production and was rolled back."""

    def lines(self) -> list[str]:
        """What ``evostream template evolve`` prints: one line per variant (its selection score), the selected one's
        confirmation (both versions' confirmation scores), then the outcome."""
        out = [
            f"{self.current}: held-out {self.current_score:.3f} on {self.held_out_n} {self.task} examples (selection); "
            f"a variant needs a gain of {self.min_gain:.3f} there and again on {self.held_out_n} other held-out "
            "examples (confirmation), and every protected marker"
        ]
        for v in self.verdicts:
            verdict = "PASS" if v.accepted else "REFUSE"
            out.append(
                f"{verdict} {v.variant.operator} ({v.variant.detail}): selection {v.score:.3f}, gain {v.gain:+.3f}: "
                f"{v.reason}  {v.variant.template.text!r}"
            )
        for k in self.skipped:
            out.append(
                f"SKIP {k.variant.operator} ({k.variant.detail}): is {k.version}, which was production and was rolled "
                f"back ({k.reason!r}): a cycle never promotes it again  {k.variant.template.text!r}"
            )
        c = self.confirmation
        if c is not None:
            out.append(
                f"{'ACCEPT' if c.accepted else 'REFUSE'} {c.selected.variant.operator} ({c.selected.variant.detail}): "
                f"selection {c.selected.score:.3f} (gain {c.selected.gain:+.3f}), confirmation {c.score:.3f} vs "
                f"{c.current_score:.3f} (gain {c.gain:+.3f}): {c.reason}"
            )
        if self.accepted is None:
            out.append(f"no variant accepted: {self.current} stays")
        else:
            out.append(f"accepted {self.accepted} ({self.stage})" + (f": {self.note}" if self.note else ""))
        return out


def evolve(
    gov: Governance,
    store: ArtifactStore,
    name: str,
    answer: Answer,
    task: str | None = None,
    per_task: int = HELD_OUT_PER_TASK,
    scored_with: str | None = None,
    reason: str = "",
) -> Cycle:
    """Propose variants of template ``name``'s production version, score each and the version itself on the selection
    split of ``task`` (default: the template's), pick the best one the gate passes, score it and the version again on
    the confirmation split (``splits``: ``per_task`` examples each), and register it only when its gain holds there
    too, with its lineage and the whole cycle as evidence, validated and promoted as far as the policy lets this
    actor. A variant that is a version which was production and was rolled back is skipped (``rolled_back``). Nothing
    is written when every variant is refused."""
    view = gov.state()
    registry = view.registry
    model = model_name(name)
    current = registry.production(model)
    if current is None:
        if model not in registry.models:
            _unknown(registry, name)
        raise TemplateError(f"template {name!r} has no production version to evolve: promote one first")
    t = load_template(store, registry.version(model, current)["artifact_sha256"])
    task = task or t.task
    if not task:
        raise TemplateError(f"template {name!r} names no task: give the task it is scored on (--task)")
    examples, others = splits(task, per_task)
    base = score(answer, t, examples)
    gain = min_gain(registry)
    backed_out = {
        load_template(store, registry.version(model, v)["artifact_sha256"]): (v, why)
        for v, why in rolled_back(view.events, model).items()
    }
    variants, skipped = [], []
    for v in propose(t, current, worked_examples(task)):
        if v.template in backed_out:  # the same name, text, markers and task: that version's content
            skipped.append(Skipped(v, *backed_out[v.template]))
        else:
            variants.append(v)
    verdicts = [judge(t, base, v, score(answer, v.template, examples), gain) for v in variants]
    chosen = best(verdicts)
    cycle = Cycle(name, task, current, base, len(examples), gain, verdicts, None, None, None, "", tuple(skipped))
    if chosen is None:
        return cycle
    confirmed = confirm(chosen, score(answer, t, others), score(answer, chosen.variant.template, others), gain)
    if not confirmed.accepted:
        return Cycle(name, task, current, base, len(examples), gain, verdicts, confirmed, None, None, "", cycle.skipped)
    tried = [
        {
            "operator": v.variant.operator,
            "detail": v.variant.detail,
            "text": v.variant.template.text,
            "held_out_accuracy": v.score,
            "gain": v.gain,
            "accepted": v.accepted,
            "reason": v.reason,
        }
        for v in verdicts
    ]
    evidence = {
        "task": task,
        "held_out_n": len(examples),
        "held_out_accuracy": chosen.score,
        "parent_held_out_accuracy": base,
        "gain": chosen.gain,
        "confirmation_n": len(others),
        "confirmation_accuracy": confirmed.score,
        "parent_confirmation_accuracy": confirmed.current_score,
        "confirmation_gain": confirmed.gain,
        "min_gain": gain,
        "scored_with": scored_with,
    }
    variant = chosen.variant.template
    uri, sha = store_template(store, variant)
    version = version_of_artifact(registry, name, sha)
    if version is None:
        version = next_version(registry, name)
        gov.register(
            model,
            version,
            artifact_uri=uri,
            artifact_sha256=sha,
            parent=current,
            operator=EVOLVE,
            operator_params={"operator": chosen.variant.operator, "detail": chosen.variant.detail, "tried": tried},
            metrics={**evidence, "markers": list(variant.markers)},
            reason=reason or f"template co-evolution cycle on {task}: {chosen.variant.operator}",
        )
    gates = {
        "held_out_gain": {"value": chosen.gain, "threshold": gain, "passed": True, "n": len(examples)},
        "confirmation_gain": {"value": confirmed.gain, "threshold": gain, "passed": True, "n": len(others)},
        "protected_markers": {"value": list(t.markers), "passed": True},
    }
    why = f"{chosen.reason}; {confirmed.reason}"
    gov.validated(model, version, True, gates, reason=f"held-out {task}: {why}")
    gov.propose(model, version, evidence, reason=f"{chosen.variant.operator}: {why}")
    stage, note = promote_as_allowed(gov, model, version, f"template co-evolution: {why}")
    return Cycle(
        name, task, current, base, len(examples), gain, verdicts, confirmed, version, stage, note, cycle.skipped
    )


def rollback(gov: Governance, name: str, to: str, reason: str) -> GovEvent:
    """Move template ``name``'s production pointer back to ``to`` (``N``, ``name@N`` or ``previous``)."""
    target = to if to == "previous" else parse_ref(f"{name}@{to.removeprefix(name + '@')}").version
    return gov.rollback(model_name(name), str(target), reason)


# --- serving ---------------------------------------------------------------------------------------------------------
class GovernedTemplates:
    """The inference service's templates (``prompts.Renderer``): a request's ``template`` resolved on the governance
    log (a verified, anchored replay first, then its tail every ``poll_s``) and its prompt rendered into that
    version's text, read from the store (re-hashed once, then kept: an artifact never changes)."""

    def __init__(self, server: str, settings: Settings, poll_s: float = 1.0) -> None:
        self.store = ArtifactStore(settings.artifacts_dir)
        self.poll_s = poll_s
        self._settings = settings
        self._log = GovernanceLog(server, topic=settings.governance_topic)
        items = self._log.items()
        registry, findings = replay(items)
        findings = anchored(settings, registry, findings, items)
        if findings:
            raise GovernanceError(
                f"the governance log failed verification ({findings[0]}): no template is served from it "
                "(`evostream replay --verify`)"
            )
        self.registry = registry
        self._texts: dict[str, Template] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="template-follower", daemon=True)
        self._thread.start()

    def render(self, ref: str | None, prompt: str) -> tuple[str, str | None]:
        if ref is None:
            return prompt, None
        version, sha = resolve(self.registry, ref)
        with self._lock:
            t = self._texts.get(sha)
        if t is None:
            try:
                t = load_template(self.store, sha)
            except ArtifactError as e:  # the request's error, not the service's: other templates still serve
                raise TemplateError(f"template version {version} cannot be served: {e}") from e
            with self._lock:
                self._texts[sha] = t
        return render(t, prompt), version

    def _follow(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                tail = self._log.items(from_offset=self.registry.offset + 1)
                if tail:
                    registry, findings = replay(tail, start=self.registry)
                    if findings:  # a void may reach back before the tail (a forced one): judge the whole log
                        registry, findings = replay(self._log.items())
                    if findings:
                        raise GovernanceError(f"the governance log failed verification: {findings[0]}")
                    self.registry = registry
            except Exception as e:  # the templates known keep serving; retried every poll
                log.error("template follower: %s (retrying)", e)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._log.close()
