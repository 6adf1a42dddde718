"""Deterministic text-to-text tasks: the embedded model's training data and the accuracy baseline evolution protects.

Each task turns a ``random.Random`` into one (prompt, answer) pair. Splits are seeded per task and split name, and
the evaluation split excludes every prompt of the training split, so held-out accuracy is measured on unseen inputs.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from evostream.core.errors import EvoError

LETTERS = string.ascii_lowercase


class SuiteError(EvoError):
    """The suite cannot make what was asked: an unknown task, or more distinct examples than a task has."""


@dataclass(frozen=True)
class Example:
    task: str
    prompt: str
    answer: str


@dataclass(frozen=True)
class Task:
    name: str
    doc: str
    make: Callable[[random.Random], tuple[str, str]]


def _word(rng: random.Random, lo: int = 3, hi: int = 8) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(rng.randint(lo, hi)))


def _reverse(rng: random.Random) -> tuple[str, str]:
    w = _word(rng)
    return f"reverse: {w}", w[::-1]


def _sort(rng: random.Random) -> tuple[str, str]:
    w = _word(rng)
    return f"sort: {w}", "".join(sorted(w))


def _upper(rng: random.Random) -> tuple[str, str]:
    w = _word(rng)
    return f"upper: {w}", w.upper()


def _add(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    return f"add: {a}+{b}", str(a + b)


def _lookup(rng: random.Random) -> tuple[str, str]:
    keys = rng.sample(LETTERS, 4)
    values = [rng.randint(0, 9) for _ in keys]
    k = rng.choice(keys)
    table = " ".join(f"{kk}={v}" for kk, v in zip(keys, values, strict=True))
    return f"lookup: {k}; {table}", str(values[keys.index(k)])


def _date(rng: random.Random) -> tuple[str, str]:
    y, m, d = rng.randint(1950, 2049), rng.randint(1, 12), rng.randint(1, 28)
    return f"date: {y:04d}-{m:02d}-{d:02d}", f"{d:02d}/{m:02d}/{y:04d}"


TASKS: tuple[Task, ...] = (
    Task("reverse", "reverse a lowercase word of 3-8 letters", _reverse),
    Task("sort", "sort the letters of a word", _sort),
    Task("upper", "upper-case a word", _upper),
    Task("add", "add two numbers below 100", _add),
    Task("lookup", "read a key's digit from a 4-entry table", _lookup),
    Task("date", "reformat an ISO date as DD/MM/YYYY", _date),
)


def training_stream(seed: int, exclude: frozenset[str], mix: Mapping[str, int] | None = None) -> Iterator[Example]:
    """An endless, seeded stream of examples, round-robin over tasks (``mix[task]`` times per round, default once),
    never one whose prompt is in ``exclude``."""
    rng = random.Random(f"train/{seed}")
    unknown = set(mix or {}) - {t.name for t in TASKS}
    if unknown:
        raise SuiteError(f"unknown tasks in mix: {sorted(unknown)}")
    cycle = [t for t in TASKS for _ in range((mix or {}).get(t.name, 1))]
    while True:
        for task in cycle:
            while True:
                prompt, answer = task.make(rng)
                if prompt not in exclude:
                    break
            yield Example(task.name, prompt, answer)


def make_split(split: str, per_task: int, exclude: frozenset[str] = frozenset()) -> list[Example]:
    """``per_task`` distinct examples of every task, deterministic in ``split``, none whose prompt is in ``exclude``."""
    out: list[Example] = []
    for i, task in enumerate(TASKS):
        rng = random.Random(f"{split}/{task.name}/{i}")
        seen: set[str] = set()
        tries = 0
        while len(seen) < per_task:
            tries += 1
            if tries > per_task * 50:
                raise SuiteError(f"task {task.name} cannot make {per_task} distinct {split} examples")
            prompt, answer = task.make(rng)
            if prompt in seen or prompt in exclude:
                continue
            seen.add(prompt)
            out.append(Example(task.name, prompt, answer))
    return out


def _stress(rng: random.Random) -> Example:
    """One example of a suite task just past the training distribution (longer words, 3-digit sums, 6-entry tables,
    years outside 1950-2049): the model is sometimes wrong here, which a risk score should see coming."""
    task = rng.choice(["reverse", "sort", "upper", "add", "lookup", "date"])
    if task in ("reverse", "sort", "upper"):
        w = _word(rng, 9, 12)
        answer = {"reverse": w[::-1], "sort": "".join(sorted(w)), "upper": w.upper()}[task]
        return Example(task, f"{task}: {w}", answer)
    if task == "add":
        a, b = rng.randint(100, 999), rng.randint(0, 999)
        return Example(task, f"add: {a}+{b}", str(a + b))
    if task == "lookup":
        keys = rng.sample(LETTERS, 6)
        values = [rng.randint(0, 9) for _ in keys]
        k = rng.choice(keys)
        table = " ".join(f"{kk}={v}" for kk, v in zip(keys, values, strict=True))
        return Example(task, f"lookup: {k}; {table}", str(values[keys.index(k)]))
    y, m, d = rng.choice([rng.randint(1800, 1949), rng.randint(2050, 2199)]), rng.randint(1, 12), rng.randint(1, 28)
    return Example(task, f"date: {y:04d}-{m:02d}-{d:02d}", f"{d:02d}/{m:02d}/{y:04d}")


def stress_split(n: int, seed: str = "stress") -> list[Example]:
    """``n`` deterministic examples just outside the training distribution (see ``_stress``)."""
    rng = random.Random(seed)
    return [_stress(rng) for _ in range(n)]
