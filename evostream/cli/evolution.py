"""``evostream analyze``, ``evostream evolve`` and ``evostream evolution run``: the evolution consumer, wired.

Here, in the CLI layer, because a cycle meets four parts that never import each other: the governance log (which
version serves, and where the proposal goes), the artifact store, the log of served traffic, and the risk maths of
the processors with the producer's reference runs (the sandbox's risk rate)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from evostream.cli.common import Bootstrap, broker, friendly, say
from evostream.core.bus.security import act_as
from evostream.core.errors import EvolutionError
from evostream.core.settings import Settings, load_settings
from evostream.wiring import evolution as wiring
from evostream.wiring.evolution import cycle_config, cycle_line, risk_rate

__all__ = ["consumer", "cycle_config", "cycle_line", "evolution_actor", "risk_rate"]

if TYPE_CHECKING:
    from evostream.consumers.evolution.cycle import CycleConfig
    from evostream.consumers.governance.service import Governance

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
    from evostream.models.default_model import MODEL_ID

    return MODEL_ID


def evolution_actor(settings: Settings, server: str) -> Governance:
    return wiring.evolution_actor(settings, server, say)


def consumer(settings: Settings, server: str, model: str, cfg: CycleConfig) -> Any:
    """The evolution consumer for ``model``, wired: its signer, the artifact store, the risk rate."""
    return wiring.consumer(settings, server, model, cfg, say)


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
    from evostream.consumers.evolution.inputs import read_observed
    from evostream.consumers.evolution.plan import analyze as analyze_model
    from evostream.models.suite.tasks import make_split

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
    act_as("evolution")
    import signal

    settings = _settings(bootstrap)
    if every is not None:
        settings = settings.model_copy(update={"evolution_every_s": every})
    server = broker(settings)
    name = _model_name(model)
    evo = consumer(settings, server, name, cycle_config(recipe, steps, held_out, reps))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: evo.stop_event.set())
    say(
        f"evolution: following evo.drift for {name}"
        + (f", and a cycle every {settings.evolution_every_s} s" if settings.evolution_every_s else "")
    )

    def report(out: Any) -> None:
        for c in out.result.candidates if out.result else []:
            print(cycle_line(c), flush=True)

    evo.run(settings.evolution_every_s, report)
