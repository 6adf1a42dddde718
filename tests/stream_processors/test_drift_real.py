"""Drift on real producer output: the embedded model's completions of the task suite, with real MiniLM embeddings.

20 windows of in-distribution traffic stay quiet; a window of a task family the model never saw fires."""

from __future__ import annotations

import random
import string
from typing import Any

import pytest

from evostream.models.loading import load_model
from evostream.models.suite.tasks import make_split
from evostream.producers.embedding import PromptEmbedder
from evostream.producers.generate import GenParams, InstrumentedGenerator
from evostream.producers.records import completion_record
from evostream.producers.steps import TraceMeta
from evostream.stream_processors.drift.policy import DriftPolicy
from evostream.stream_processors.drift.tracker import DriftTracker, DriftWindows

REFERENCE, WINDOW, WINDOWS = 200, 50, 20


def completions(prompts: list[str]) -> list[dict[str, Any]]:
    lm = load_model("default")
    gen = InstrumentedGenerator(lm)
    embedder = PromptEmbedder()
    out = []
    for start in range(0, len(prompts), 64):
        chunk = prompts[start : start + 64]
        results = gen.generate(chunk, GenParams(max_new_tokens=16))
        for i, (res, emb) in enumerate(zip(results, embedder.embed(chunk), strict=True)):
            meta = TraceMeta(f"t{start + i}", f"r{start + i}", "", "test", 0)
            text = lm.tokenizer.decode(res.token_ids, skip_special_tokens=True)
            out.append(completion_record(meta, lm.version, res, text, emb, 0) | {"completed_at_us": start + i})
    gen.close()
    return out


def new_family(n: int) -> list[str]:
    rng = random.Random("drift/new-family")
    words = ["".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(4, 9))) for _ in range(n)]
    return [f"please translate the word {w} into french and explain it" for w in words]


@pytest.fixture(scope="module")
def traffic() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    suite = make_split("drift", (REFERENCE + WINDOW * WINDOWS) // 6 + 1)
    random.Random(0).shuffle(suite)
    prompts = [e.prompt for e in suite][: REFERENCE + WINDOW * WINDOWS]
    both = completions(prompts + new_family(WINDOW))
    return both[: len(prompts)], both[len(prompts) :]


def test_in_distribution_traffic_is_quiet_and_a_new_task_family_fires(
    traffic: tuple[list[dict[str, Any]], list[dict[str, Any]]],
) -> None:
    same, shifted = traffic
    tracker = DriftTracker(DriftPolicy(), DriftWindows(REFERENCE, WINDOW))
    state: Any = None
    reports = []
    for k, rec in enumerate(same):
        out = tracker.on_completion(state, rec, k, 0)
        state, reports = out.state, reports + out.reports
    assert len(reports) == WINDOWS
    for r in reports:
        assert not r["fired"], r["statistics"]
    quiet = {
        s["name"]: max(r_s["value"] for r in reports for r_s in r["statistics"] if r_s["name"] == s["name"])
        for s in reports[0]["statistics"]
    }
    out_reports = []
    for k, rec in enumerate(shifted):
        out = tracker.on_completion(state, rec, len(same) + k, 0)
        state, out_reports = out.state, out_reports + out.reports
    assert len(out_reports) == 1
    shift = {s["name"]: s for s in out_reports[0]["statistics"]}
    assert out_reports[0]["fired"]
    for name in ("embedding_mmd2", "intent_psi", "vocabulary_js_bits"):
        assert shift[name]["fired"], (name, shift[name], quiet[name])
        assert shift[name]["value"] > quiet[name]
    assert shift["new_token_rate"]["value"] >= quiet["new_token_rate"]
