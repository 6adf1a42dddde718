"""The drift agent's fold over completions: reference, windows, replays, and the DriftReport record."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from evostream.schemas.codec import RecordCodec
from evostream.stream_processors.drift.policy import DriftPolicy
from evostream.stream_processors.drift.tracker import DriftTracker, DriftWindows

CENTERS = np.random.default_rng(7).normal(0, 2, size=(6, 384))


def completion(i: int, group: int, vocab: range, rng: np.random.Generator, **changes: Any) -> dict[str, Any]:
    emb = CENTERS[group] + rng.normal(0, 0.5, size=384)
    rec = {
        "trace_id": f"t{i}",
        "model_version": "m@1",
        "prompt_embedding": emb.tolist(),
        "error": None,
        "output_token_ids": rng.choice(vocab, size=6).tolist(),
        "completed_at_us": 1_000_000 + i,
    }
    rec.update(changes)
    return rec


def feed(tracker: DriftTracker, recs: list[dict[str, Any]], state: Any = None, first_offset: int = 0) -> Any:
    reports = []
    for k, r in enumerate(recs):
        out = tracker.on_completion(state, r, first_offset + k, 0)
        state = json.loads(json.dumps(out.state))  # what a changelog gives back
        reports += out.reports
    return state, reports


def test_reference_then_one_report_per_window_quiet_in_distribution_then_firing_on_a_shift() -> None:
    rng = np.random.default_rng(0)
    tracker = DriftTracker(DriftPolicy(intent_clusters=4), DriftWindows(reference_size=120, window_size=40))
    same = [completion(i, i % 4, range(50), rng) for i in range(120 + 20 * 40)]
    state, reports = feed(tracker, same)
    assert len(reports) == 20
    assert not any(r["fired"] for r in reports), [r["statistics"] for r in reports if r["fired"]]
    shifted = [completion(2000 + i, 5, range(40, 90), rng) for i in range(40)]
    state, reports = feed(tracker, shifted, state, first_offset=len(same))
    assert len(reports) == 1 and reports[0]["fired"]
    fired = {s["name"] for s in reports[0]["statistics"] if s["fired"]}
    assert fired == {"embedding_mmd2", "vocabulary_js_bits", "new_token_rate", "intent_psi"}
    back = RecordCodec("DriftReport").decode(RecordCodec("DriftReport").encode(reports[0]))
    assert back["sample_count"] == 40 and back["statistics"][0]["p_value"] is not None


def test_replayed_completions_are_skipped_and_failures_not_counted() -> None:
    rng = np.random.default_rng(1)
    tracker = DriftTracker(DriftPolicy(), DriftWindows(reference_size=30, window_size=20))
    recs = [completion(i, i % 2, range(10), rng) for i in range(10)]
    state, _ = feed(tracker, recs)
    again = tracker.on_completion(state, recs[5], 5, 0)
    assert again.duplicates == 1 and len(again.state["reference"]["emb"]) == 10
    forwarded_twice = tracker.on_completion(state, recs[5], 11, 0)
    assert forwarded_twice.duplicates == 1
    failed = tracker.on_completion(state, completion(99, 0, range(3), rng, error="boom"), 10, 0)
    assert failed.state["skipped"] == 1 and len(failed.state["reference"]["emb"]) == 10


def test_a_completion_forwarded_again_after_its_window_was_reported_is_skipped() -> None:
    """A restart replays the source topic from its last commit: the repartition forwards those completions again,
    at new offsets, possibly after their window was reported and emptied."""
    rng = np.random.default_rng(2)
    tracker = DriftTracker(DriftPolicy(), DriftWindows(reference_size=20, window_size=20))
    recs = [completion(i, i % 2, range(10), rng) for i in range(50)]
    state, reports = feed(tracker, recs)
    assert len(reports) == 1 and state["windows"] == 1 and len(state["window"]["emb"]) == 10
    state, reports = feed(tracker, recs, json.loads(json.dumps(state)), first_offset=50)
    assert reports == [] and state["windows"] == 1 and len(state["window"]["emb"]) == 10
