"""One evolution cycle: build candidates from recipes, let each recover by distillation from its parent, store it,
validate it as loaded from the store, and choose among those that pass.

The choice: the Pareto front of the passing candidates over (mean accuracy, ms per token, bytes), and on it the
one with the smallest bytes x ms-per-token (most compression and speed together), ties to the more accurate.
Nothing here touches governance; ``propose`` does, with the cycle's result."""

from __future__ import annotations

import copy
import itertools
import json
import shutil
import string
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from evostream.consumers.evolution.batches import Pair
from evostream.consumers.evolution.distill import DistillConfig, DistillReport, distill, mixed_stream
from evostream.consumers.evolution.inputs import Observed
from evostream.consumers.evolution.measure import parameter_count
from evostream.consumers.evolution.operators.adapter import AdapterReport, add_adapter, merge_adapter, train_adapter
from evostream.consumers.evolution.operators.quantize import quantize_int8, save_int8
from evostream.consumers.evolution.operators.vocab import prune_vocab, used_token_ids
from evostream.consumers.evolution.recipe import Recipe, build
from evostream.consumers.evolution.sandbox import Gates, RiskRate, Validation, ratios, validate
from evostream.core.artifacts import ArtifactStore
from evostream.core.errors import EvolutionError
from evostream.models.default_model.train import training_examples
from evostream.models.loading import LoadedModel, load_model
from evostream.models.suite.evaluate import eval_set
from evostream.models.suite.tasks import Example, make_split

DEFAULT_RECIPES = (
    Recipe(drop_layers=1, keep_heads=0.5, keep_ffn=0.5),
    Recipe(drop_layers=1, keep_heads=0.5, keep_ffn=0.5, vocab=True, int8=True),
    Recipe(drop_layers=1, keep_heads=0.5, keep_ffn=0.5, adapter_rank=16),
    Recipe(keep_heads=0.5, keep_ffn=0.5),
)
"""The default search: the measured best trade (one layer, half the heads and neurons; bench.evolution, see
docs/benchmarks.md#the-default-searchs-recipes-batch-1-and-batch-16) alone, with the vocabulary the traffic uses stored
as int8, and with an adapter's extra recovery; and a milder one that keeps every layer. Recipes that differ only in
storage (vocabulary, int8) or in the adapter share one build and one distillation, so this grid costs two
distillations."""


@dataclass(frozen=True)
class CycleConfig:
    recipes: tuple[Recipe, ...] = DEFAULT_RECIPES
    distill: DistillConfig = field(default_factory=DistillConfig)
    gates: Gates = field(default_factory=Gates)
    analysis_per_task: int = 16
    """Suite examples per task that importance is measured on (with up to as many logged pairs)."""
    held_out_per_task: int = 50
    logged_share: float = 0.5
    speed_reps: int = 5
    new_tokens: int = 16
    max_replayed: int = 300
    adapter_steps: int = 300
    adapter_lr: float = 1e-3


@dataclass
class Candidate:
    recipe: Recipe
    sha256: str
    uri: str
    parameters: int
    validation: Validation
    distillation: DistillReport
    adapter: AdapterReport | None = None

    @property
    def passed(self) -> bool:
        return self.validation.passed

    def metrics(self) -> dict[str, Any]:
        c = self.validation.candidate
        r = ratios(self.validation)
        return {
            "parameters": c.parameters,
            "bytes_on_disk": c.bytes,
            "task_accuracy": c.accuracy,
            "ms_per_token": round(c.speed.median, 4),
            "alerts_per_100": c.risk_rate,
            "vs_parent": {k: round(v, 4) for k, v in r.items()},
            "agreement": self.validation.agreement,
            "distillation": {
                "steps": self.distillation.steps,
                "seconds": round(self.distillation.seconds, 1),
                "final_loss": round(self.distillation.losses[-1], 5) if self.distillation.losses else None,
            },
            "adapter": None
            if (a := self.adapter) is None
            else {"steps": a.steps, "seconds": round(a.seconds, 1), "final_loss": round(a.losses[-1], 5)},
        }


@dataclass
class CycleResult:
    parent_version: str
    candidates: list[Candidate] = field(default_factory=list)
    chosen: Candidate | None = None
    front: list[Candidate] = field(default_factory=list)


def pareto_front(cands: Sequence[Candidate]) -> list[Candidate]:
    """The candidates no other one beats on accuracy, speed and size at once."""

    def key(c: Candidate) -> tuple[float, float, float]:
        s = c.validation.candidate
        return (-s.accuracy["mean"], s.speed.median, float(s.bytes))

    def dominates(a: Candidate, b: Candidate) -> bool:
        ka, kb = key(a), key(b)
        return all(x <= y for x, y in zip(ka, kb, strict=True)) and ka != kb

    return [c for c in cands if not any(dominates(o, c) for o in cands if o is not c)]


def choose(cands: Sequence[Candidate]) -> tuple[Candidate | None, list[Candidate]]:
    front = pareto_front([c for c in cands if c.passed])
    if not front:
        return None, []
    best = min(
        front,
        key=lambda c: (
            c.validation.candidate.bytes * c.validation.candidate.speed.median,
            -c.validation.candidate.accuracy["mean"],
        ),
    )
    return best, front


def _suite_pairs(seed: int) -> Iterator[Pair]:
    return ((e.prompt, e.answer) for e in training_examples(seed, {}))


def vocabulary(tok: PreTrainedTokenizerBase, observed: Observed, seed: int, suite_pairs: int = 4000) -> Counter[int]:
    """The token ids a candidate keeps: those of the logged prompts and answers (and the answers' generated ids),
    of a sample of the suite's stream (the held-out suite is validated on), and of printable ASCII."""
    texts = [t for pair in observed.targets for t in pair]
    texts += [t for pair in itertools.islice(_suite_pairs(seed), suite_pairs) for t in pair]
    used = used_token_ids(tok, [*texts, string.printable])
    used.update(i for ids in observed.output_token_ids for i in ids)
    return used


def adapt(
    student: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    observed: Observed,
    rank: int,
    cfg: CycleConfig,
    progress: Callable[[str], None],
) -> tuple[PreTrainedModel, AdapterReport]:
    """``student`` plus a rank-``rank`` adapter on every FFN output projection, trained alone on the distillation's
    traffic (the parent's logged answers and the suite), then merged: a plain model of the family again."""
    stream = mixed_stream(observed.targets, _suite_pairs(cfg.distill.seed + 1), cfg.logged_share, cfg.distill.seed + 1)
    pairs = list(itertools.islice(stream, cfg.adapter_steps * cfg.distill.batch_size))
    progress(f"adapter: rank {rank} on every FFN output projection, {cfg.adapter_steps} steps")
    grown = add_adapter(student, rank=rank, seed=cfg.distill.seed)
    report = train_adapter(
        grown,
        tok,
        pairs,
        cfg.adapter_steps,
        cfg.adapter_lr,
        progress,
        batch_size=cfg.distill.batch_size,
        seed=cfg.distill.seed,
    )
    return merge_adapter(grown).eval(), report


def run_cycle(
    parent: LoadedModel,
    parent_dir: Path,
    observed: Observed,
    store: ArtifactStore,
    workdir: Path,
    cfg: CycleConfig = CycleConfig(),
    risk_rate: RiskRate | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> CycleResult:
    """Build, recover, store and validate one candidate per recipe; choose among those that pass."""
    if not cfg.recipes:
        raise EvolutionError("a cycle needs at least one recipe")
    held_out: list[Example] = list(eval_set(per_task=cfg.held_out_per_task))
    analysis: list[Pair] = [(e.prompt, e.answer) for e in make_split("analysis", cfg.analysis_per_task)]
    analysis += observed.pairs[-len(analysis) :]
    replayed = observed.prompts[-cfg.max_replayed :]
    result = CycleResult(parent.version)
    distilled: dict[tuple[int, int, float, float], tuple[PreTrainedModel, DistillReport]] = {}
    adapted: dict[tuple[int, int, float, float, int], tuple[PreTrainedModel, AdapterReport]] = {}
    for i, recipe in enumerate(cfg.recipes):
        t0 = time.perf_counter()
        progress(f"candidate {i + 1}/{len(cfg.recipes)}: {recipe.name} from {parent.version}")
        base_key = recipe.student_key[:4]
        if base_key in distilled:
            progress("build: the same student as an earlier candidate (built and distilled once)")
        else:
            student = build(parent.model, parent.tokenizer, recipe, analysis, progress=progress)
            if student is parent.model:
                student = copy.deepcopy(parent.model)
            progress(f"build: {parameter_count(parent.model):,} -> {parameter_count(student):,} parameters")
            progress(
                f"distil: on {len(observed.pairs)} logged answers and {len(observed.reference_pairs)} reference "
                "answers to escalated requests, with the suite"
            )
            pairs = mixed_stream(observed.targets, _suite_pairs(cfg.distill.seed), cfg.logged_share, cfg.distill.seed)
            distilled[base_key] = (
                student,
                distill(student, parent.model, parent.tokenizer, pairs, cfg.distill, progress),
            )
        student, report = distilled[base_key]
        adapter: AdapterReport | None = None
        if recipe.adapter_rank:
            if recipe.student_key not in adapted:
                adapted[recipe.student_key] = adapt(
                    student, parent.tokenizer, observed, recipe.adapter_rank, cfg, progress
                )
            student, adapter = adapted[recipe.student_key]
        tok = parent.tokenizer
        if recipe.vocab:
            keep = vocabulary(tok, observed, cfg.distill.seed)
            student, tok = prune_vocab(student, tok, keep)
            progress(
                f"vocabulary: {student.config.vocab_size} of {parent.model.config.vocab_size} rows kept (the "
                f"{len(keep)} token ids the log and the suite use, and the special tokens)"
            )
        folder = workdir / f"candidate-{i}-{recipe.name}"
        if folder.exists():
            shutil.rmtree(folder)
        if recipe.int8:
            save_int8(quantize_int8(student), folder, tok)
        else:
            student.save_pretrained(folder)
            tok.save_pretrained(folder)
        (folder / "evolution.json").write_text(
            json.dumps({"parent": parent.version, "recipe": recipe.params(), "distill": cfg.distill.__dict__}, indent=2)
        )
        ref = store.put_dir(folder)
        path = store.open(ref.sha256)  # re-hashed, then loaded: the candidate validated is the stored one
        stored = load_model(str(path), device=str(parent.device))
        v = validate(
            (parent.model, parent.tokenizer, parent_dir),
            (stored.model, stored.tokenizer, path),
            held_out,
            replayed,
            cfg.gates,
            risk_rate,
            new_tokens=cfg.new_tokens,
            speed_reps=cfg.speed_reps,
            progress=progress,
        )
        cand = Candidate(recipe, ref.sha256, ref.uri, parameter_count(stored.model), v, report, adapter)
        result.candidates.append(cand)
        r = ratios(v)
        progress(
            f"candidate {recipe.name}: {'PASS' if v.passed else 'FAIL'}; mean accuracy "
            f"{v.candidate.accuracy['mean']:.3f} (parent {v.parent.accuracy['mean']:.3f}), {r['bytes']:.2f}x "
            f"smaller, {r['speed']:.2f}x faster per token; {time.perf_counter() - t0:.0f}s"
        )
    result.chosen, result.front = choose(result.candidates)
    return result
