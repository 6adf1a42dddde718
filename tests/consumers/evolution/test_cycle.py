"""A cycle over several recipes on the embedded model: recipes that differ only in storage (int8) or in an adapter
share one build and one distillation; the adapter's recovery is merged (no extra parameters, other weights); the
choice is the Pareto front over accuracy, speed and size, and among it the smallest bytes x ms per token."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from evostream.consumers.evolution.batches import teacher_forcing
from evostream.consumers.evolution.cycle import DEFAULT_RECIPES, Candidate, CycleConfig, choose, pareto_front, run_cycle
from evostream.consumers.evolution.distill import DistillConfig, DistillReport
from evostream.consumers.evolution.inputs import Observed
from evostream.consumers.evolution.measure import Speed
from evostream.consumers.evolution.recipe import Recipe
from evostream.consumers.evolution.sandbox import Side, Validation
from evostream.core.artifacts import ArtifactStore
from evostream.core.errors import EvolutionError
from evostream.models.default_model import WEIGHTS_DIR
from evostream.models.loading import load_model
from evostream.models.suite.tasks import make_split

pytestmark = pytest.mark.usefixtures("one_thread")


def test_recipes_parse_name_and_refuse_bad_items() -> None:
    r = Recipe.parse("drop=1,heads=0.5,ffn=0.5,adapter=8,vocab=1,int8=1")
    assert r == Recipe(drop_layers=1, keep_heads=0.5, keep_ffn=0.5, adapter_rank=8, vocab=True, int8=True)
    assert r.name == "drop1+heads0.5+ffn0.5+adapter8+vocab+int8"
    assert r.student_key == Recipe.parse("drop=1,heads=0.5,ffn=0.5,adapter=8").student_key
    assert r.student_key != Recipe.parse("drop=1,heads=0.5,ffn=0.5").student_key
    for bad, says in (
        ("adapter=-1", "cannot be negative"),
        ("adapter=x", "is not a number"),
        ("size=3", "expected one of"),
        ("ffn=0", "must be in (0, 1]"),
    ):
        with pytest.raises(EvolutionError, match=says.replace("(", r"\(").replace(")", r"\)")):
            Recipe.parse(bad)
    assert len({x.student_key[:4] for x in DEFAULT_RECIPES}) == 2  # the default grid: two distillations


def test_recipes_differing_in_storage_or_adapter_share_one_distilled_student(tmp_path: Path) -> None:
    parent = load_model(str(WEIGHTS_DIR))
    pairs = [(e.prompt, e.answer) for e in make_split("cycle-test", 2)]
    recipes = (
        Recipe(keep_ffn=0.9),
        Recipe(keep_ffn=0.9, int8=True),
        Recipe(keep_ffn=0.9, adapter_rank=2),
        Recipe(keep_ffn=0.9, vocab=True),
    )
    cfg = CycleConfig(
        recipes=recipes,
        distill=DistillConfig(steps=2, batch_size=8),
        analysis_per_task=2,
        held_out_per_task=2,
        speed_reps=1,
        new_tokens=4,
        adapter_steps=3,
    )
    said: list[str] = []
    result = run_cycle(
        parent,
        WEIGHTS_DIR,
        Observed(parent.version, pairs=pairs),
        ArtifactStore(tmp_path / "a"),
        tmp_path / "w",
        cfg,
        progress=said.append,
    )
    text = "\n".join(said)
    assert text.count("build: keeping") == 1 and text.count("distil") >= 1, text
    assert text.count("the same student as an earlier candidate") == 3, text
    plain, int8, adapted, small_vocab = result.candidates
    assert [c.recipe for c in result.candidates] == list(recipes)
    assert len({c.sha256 for c in result.candidates}) == 4  # four different artifacts
    assert plain.parameters == adapted.parameters == 1_427_840 - 6 * 2 * 128 * 52  # 460 of 512 neurons kept
    assert int8.validation.candidate.bytes < plain.validation.candidate.bytes / 2.5
    assert plain.adapter is None and adapted.adapter is not None and adapted.adapter.steps == 3
    assert adapted.metrics()["adapter"]["steps"] == 3 and plain.metrics()["adapter"] is None
    assert plain.distillation is int8.distillation is adapted.distillation  # one distillation for all three
    assert adapted.adapter.alphas[-1] == 1.0 and len(adapted.adapter.losses) == 3
    # the vocabulary candidate: the same student, fewer embedding rows (tied: one matrix), its own tokenizer, and the
    # held-out suite still answered as the plain candidate answers it
    kept = int(text.split("vocabulary: ")[1].split()[0])  # rows: the ids used, and the special tokens
    assert 90 <= kept < 384, text
    assert small_vocab.parameters == plain.parameters - (384 - kept) * 128
    assert small_vocab.validation.candidate.accuracy == plain.validation.candidate.accuracy
    stored = load_model(str(ArtifactStore(tmp_path / "a").open(small_vocab.sha256)))
    assert stored.model.config.vocab_size == len(stored.tokenizer) == kept


def candidate(name: str, acc: float, ms: float, size: int, passed: bool = True) -> Candidate:
    side = Side({"mean": acc}, 1, size, Speed((ms,)), None)
    parent = Side({"mean": 1.0}, 2, 10_000, Speed((10.0,)), None)
    v = Validation(passed, {}, parent, side, None, 0)
    return Candidate(Recipe.parse(name), name, name, 1, v, DistillReport(0, 0.0))


def test_the_choice_is_on_the_pareto_front_of_passing_candidates_and_trades_size_for_speed() -> None:
    a = candidate("ffn=0.9", acc=0.99, ms=5.0, size=4000)
    b = candidate("ffn=0.8", acc=0.98, ms=4.0, size=3000)
    dominated = candidate("ffn=0.7", acc=0.97, ms=4.5, size=3500)  # b beats it on all three
    smallest = candidate("ffn=0.6", acc=0.98, ms=6.0, size=1000)
    failed = candidate("ffn=0.1", acc=0.5, ms=1.0, size=100, passed=False)
    front = pareto_front([a, b, dominated, smallest])
    assert front == [a, b, smallest]
    chosen, front2 = choose([a, b, dominated, smallest, failed])
    assert front2 == front and chosen is smallest  # 1000 x 6.0 is the least bytes x ms; the failed one never counts
    tie = candidate("ffn=0.5", acc=0.99, ms=6.0, size=1000)
    assert choose([smallest, tie])[0] is tie  # equal bytes x ms: the more accurate
    assert choose([failed]) == (None, [])


def answer_loss(model: torch.nn.Module, tok: object, pair: tuple[str, str]) -> float:
    batch = teacher_forcing(tok, [pair], True, torch.device("cpu"))  # type: ignore[arg-type]
    with torch.no_grad():
        return float(model(**batch).loss)


def test_a_distillation_run_learns_the_reference_answers_to_escalated_requests(tmp_path: Path) -> None:
    """The parent handed this request over mid-answer; the reference answered it. The cycle's student is trained
    towards the reference's answer (the only logged target here), which the parent does not give."""
    parent = load_model(str(WEIGHTS_DIR))
    handed_over = ("reverse: escalate", "the reference knows this")
    cfg = CycleConfig(
        recipes=(Recipe(keep_ffn=0.9),),
        distill=DistillConfig(steps=30, batch_size=8, lr=3e-3, warmup=3, alpha=0.5),
        analysis_per_task=2,
        held_out_per_task=1,
        speed_reps=1,
        new_tokens=4,
        logged_share=1.0,
    )
    said: list[str] = []
    observed = Observed(parent.version, pairs=[], reference_pairs=[handed_over])
    store = ArtifactStore(tmp_path / "a")
    [made] = run_cycle(parent, WEIGHTS_DIR, observed, store, tmp_path / "w", cfg, progress=said.append).candidates
    assert "distil: on 0 logged answers and 1 reference answers to escalated requests" in "\n".join(said)
    student = load_model(str(store.open(made.sha256)))
    before, after = (
        answer_loss(parent.model, parent.tokenizer, handed_over),
        answer_loss(student.model, student.tokenizer, handed_over),
    )
    assert after < 0.5 * before, (before, after)
