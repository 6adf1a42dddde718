"""``evostream analyze``, ``evostream evolve`` and ``evostream evolution run``: the evolution consumer, wired.

Here, in the CLI layer, because a cycle meets four parts that never import each other: the governance log (which
version serves, and where the proposal goes), the artifact store, the log of served traffic, and the risk maths of
the processors with the producer's reference runs (the sandbox's risk rate)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any

import typer

from evostream.cli.common import Bootstrap, broker, friendly, say
from evostream.errors import EvolutionError, GovernanceError
from evostream.settings import Settings, load_settings

if TYPE_CHECKING:
    from consumers.evolution.cycle import CycleConfig
    from consumers.governance.service import Governance

evolution_app = typer.Typer(help="The evolution consumer: cycles on drift and on a schedule.", no_args_is_help=True)

Model = Annotated[str | None, typer.Option(help="Registry model name (default: the embedded model's).")]
Recipes = Annotated[
    list[str] | None,
    typer.Option(
        "--recipe",
        help="A candidate to build: drop=N, enc-drop=N, heads=FRACTION, ffn=FRACTION, "
        "adapter=RANK, vocab=1, int8=1, e.g. drop=1,heads=0.5,ffn=0.5 (repeat for several; default: a search "
        "of four recipes).",
    ),
]
Steps = Annotated[int, typer.Option(min=0, help="Distillation steps per candidate.")]
HeldOut = Annotated[int, typer.Option(min=1, help="Held-out suite prompts per task the sandbox measures.")]
Reps = Annotated[int, typer.Option(min=1, help="Side-by-side speed repetitions.")]
Every = Annotated[int | None, typer.Option(help="Also run a cycle this often (s). Env: EVOSTREAM_EVOLUTION_EVERY_S.")]


def _settings(bootstrap: str | None) -> Settings:
    return load_settings(**({"bootstrap_servers": bootstrap} if bootstrap else {}))


def _model_name(model: str | None) -> str:
    if model:
        return model
    from models.default_model import MODEL_ID

    return MODEL_ID


def evolution_actor(settings: Settings, server: str) -> Governance:
    """The evolution consumer's own signer (a proposer). On a machine that holds an admin key and none for the
    evolution actor yet, its key is made here and enrolled by that admin, once."""
    from consumers.governance.keys import ActorKey
    from consumers.governance.log import GovernanceLog
    from consumers.governance.service import key_path, load_actor
    from evostream.cli.governance import checkpoints_path

    keys = settings.governance_dir / "keys"
    glog = GovernanceLog(server, topic=settings.governance_topic)
    me = settings.evolution_actor
    if not key_path(keys, me).exists():
        if not key_path(keys, settings.governance_actor).exists():
            raise GovernanceError(f"no key for the evolution actor {me!r} in {keys}: run `evostream governance keygen "
                                  f"{me}` and have an admin enroll it with --roles proposer")  # fmt: skip
        admin = load_actor(glog, keys, settings.governance_actor, checkpoints=checkpoints_path(settings))
        enrolled = admin.state().registry.actors.get(me)
        if enrolled is not None and enrolled["revoked_seq"] is None:
            raise GovernanceError(f"{me!r} is enrolled, but its key is not in {keys}: copy it there, or revoke the "
                                  "actor and run again")  # fmt: skip
        key = ActorKey.generate()
        key.save(key_path(keys, me))
        admin.enroll(me, key.public_hex, key.key_id, ["proposer"], reason="the evolution consumer's own key")
        say(f"governance: {settings.governance_actor} enrolled {me} as proposer (key {key.key_id})")
    return load_actor(glog, keys, me, checkpoints=checkpoints_path(settings))


def risk_rate(model: Any, tokenizer: Any, prompts: Sequence[str]) -> float:
    """Alerts per 100 generations of ``model`` on ``prompts``: the producer's reference run folded by the processors'
    risk maths under the embedded family's policy, exactly as a served trace would be."""
    from models.default_model import MODEL_ID
    from models.loading import wrap_model
    from producers.reference import run_traced
    from stream_processors.risk.policy import load_policies, policy_for
    from stream_processors.risk.score import TraceRisk

    lm = wrap_model(model, tokenizer, MODEL_ID)
    policy = policy_for(load_policies(), lm.version)
    alerted = 0
    for t in run_traced(lm, list(prompts)):
        risk = TraceRisk(policy)
        hit = False
        for s in t.steps:
            hit = hit or risk.update(s).severity(policy) is not None
        alerted += hit
    return 100.0 * alerted / max(1, len(prompts))


def cycle_config(recipes: list[str] | None, steps: int, held_out: int, reps: int) -> CycleConfig:
    from consumers.evolution.cycle import DEFAULT_RECIPES, CycleConfig
    from consumers.evolution.distill import DistillConfig
    from consumers.evolution.recipe import Recipe

    chosen = tuple(Recipe.parse(r) for r in recipes) if recipes else DEFAULT_RECIPES
    return CycleConfig(recipes=chosen, distill=DistillConfig(steps=steps), held_out_per_task=held_out,
                       speed_reps=reps)  # fmt: skip


def consumer(settings: Settings, server: str, model: str, cfg: CycleConfig) -> Any:
    """The evolution consumer for ``model``, wired: its signer, the artifact store, the risk rate."""
    from consumers.evolution.service import EvolutionConsumer
    from evostream.artifacts import ArtifactStore

    gov = evolution_actor(settings, server)
    return EvolutionConsumer(server, gov, model, ArtifactStore(settings.artifacts_dir), settings.evolution_dir, cfg,
                             risk_rate, say)  # fmt: skip


def cycle_line(c: Any) -> str:
    """One line per candidate: its recipe, verdict and what was measured against the parent."""
    from consumers.evolution.sandbox import ratios

    v = c.validation
    r = ratios(v)
    acc = " ".join(f"{t}={a:.3f}" for t, a in v.candidate.accuracy.items())
    failed = [name for name, g in v.gates.items() if not g["passed"]]
    return (f"{c.recipe.name}: {'PASS' if v.passed else 'FAIL ' + ','.join(failed)}  {v.parent.bytes:,} -> "
            f"{v.candidate.bytes:,} bytes ({r['bytes']:.2f}x), {v.parent.parameters:,} -> {v.candidate.parameters:,} "
            f"parameters, {v.parent.speed.median:.3f} -> {v.candidate.speed.median:.3f} ms/token ({r['speed']:.2f}x), "
            f"accuracy {acc}")  # fmt: skip


@friendly
def evolve(
    model: Model = None,
    recipe: Recipes = None,
    steps: Steps = 1500,
    held_out: HeldOut = 50,
    reps: Reps = 5,
    propose: Annotated[bool, typer.Option(help="Register and propose the chosen candidate to governance.")] = True,
    bootstrap: Bootstrap = None,
) -> None:
    """Run one evolution cycle now on the production version: analyze, build, distil, validate, propose."""
    settings = _settings(bootstrap)
    server = broker(settings)
    evo = consumer(settings, server, _model_name(model), cycle_config(recipe, steps, held_out, reps))
    out = evo.cycle(f"manual:{int(time.time())}", propose_it=propose)
    for c in out.result.candidates if out.result else []:
        print(cycle_line(c))
    if propose and out.version is None:
        raise EvolutionError("the cycle built no candidate")
    if propose:
        verdict = "proposed (in staging when the policy promotes passed validations)"
        if not out.passed:
            verdict = "rejected by its validation: it stays a candidate and never serves"
        say(f"{out.version}: {verdict}")


@friendly
def analyze(
    model: Model = None,
    per_task: Annotated[int, typer.Option(min=1, help="Suite examples per task the importance is measured on.")] = 16,
    top: Annotated[int, typer.Option(min=1, help="Lines of the plan to print.")] = 20,
    bootstrap: Bootstrap = None,
) -> None:
    """Rank what could go from the production version: heads, FFN neurons, layers, unused embedding rows."""
    from consumers.evolution.inputs import read_observed
    from consumers.evolution.plan import analyze as analyze_model
    from models.suite.tasks import make_split

    settings = _settings(bootstrap)
    server = broker(settings)
    parent, _ = consumer(settings, server, _model_name(model), cycle_config(None, 0, 1, 1)).parent()
    observed = read_observed(server, parent.version, progress=say)
    pairs = [(e.prompt, e.answer) for e in make_split("analysis", per_task)] + observed.pairs[-per_task * 6 :]
    counts = None
    if observed.neuron_counts is not None and observed.neuron_steps > 0:
        counts = (observed.neuron_counts, observed.neuron_steps)
    ids = [list(parent.tokenizer(p).input_ids) for p in observed.prompts] + observed.output_token_ids
    result = analyze_model(parent.model, parent.tokenizer, pairs, counts, ids or None, progress=say)
    for line in result.lines(max_entries=top):
        print(line)


@evolution_app.command("run")
@friendly
def evolution_run(
    model: Model = None,
    recipe: Recipes = None,
    steps: Steps = 1500,
    held_out: HeldOut = 50,
    reps: Reps = 5,
    every: Every = None,
    bootstrap: Bootstrap = None,
) -> None:
    """The evolution consumer: a cycle when drift fires on the production version (once per version: more windows
    of the same drift start no new cycle until another version serves), and on a schedule; one cycle at a time; a
    trigger already handled (its candidate is in the log) is never handled twice, after a restart too."""
    import signal

    settings = _settings(bootstrap)
    if every is not None:
        settings = settings.model_copy(update={"evolution_every_s": every})
    server = broker(settings)
    name = _model_name(model)
    evo = consumer(settings, server, name, cycle_config(recipe, steps, held_out, reps))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: evo.stop_event.set())
    say(f"evolution: following evo.drift for {name}" + (f", and a cycle every {settings.evolution_every_s} s"
                                                        if settings.evolution_every_s else ""))  # fmt: skip

    def report(out: Any) -> None:
        for c in out.result.candidates if out.result else []:
            print(cycle_line(c), flush=True)

    evo.run(settings.evolution_every_s, report)
