"""A routing policy learned from the log: the history assembled from the records, and ``evostream route train``
and ``eval`` on the real broker with a small labelled history served by the real inference service."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from evostream.core.artifacts import ArtifactStore
from evostream.core.clock import now_us
from evostream.core.errors import EvoError
from evostream.models.loading import load_model
from evostream.models.risk_probe import RiskProbe, fit_probe, trace_features
from evostream.models.suite.tasks import make_split, stress_split
from evostream.producers.reference import run_traced
from evostream.producers.sketch import DEFAULT_DIM
from evostream.routing.policy import GAIN_LABEL, RoutePolicy
from evostream.schemas.records import Completion
from evostream.schemas.samples import completion, generation_step
from evostream.stream_processors.risk.outcomes import OutcomeBook, outcome
from evostream.wiring.feedback import publish_outcomes
from evostream.wiring.risk import ARTIFACT_FILE, load_probe
from evostream.wiring.route_train import History, Past, assemble, train_policy
from tests.stream_processors.harness import CLI, serve

SELF, REF = "small@aaaa", "big@bbbb"


def _answer(i: int, request: str, version: str, **extra: object) -> Completion:
    fields = {
        **completion(i),
        "request_id": request,
        "model_version": version,
        "cached": False,
        "finish_reason": "STOP",
        "role": "ANSWER",
    }
    return Completion(**{**fields, **extra})  # type: ignore[typeddict-item]


def test_history_keeps_labelled_finished_self_answers_and_reads_the_reference_label() -> None:
    answers = [
        _answer(0, "r0", SELF),  # labelled wrong; the reference answered it too, labelled right
        _answer(1, "r0", REF, token_count=9),
        _answer(2, "r1", SELF),  # labelled right; no reference answer
        _answer(3, "r2", SELF, finish_reason="ESCALATED"),  # a partial: the self model did not finish
        _answer(4, "r2", REF),
        _answer(5, "r3", SELF, cached=True),  # a cache hit: no generation of its own
        _answer(6, "r4", SELF),  # not labelled
        _answer(7, "r1", SELF, role="SHADOW"),  # a candidate of the family answered a mirror of r1: no answer
    ]
    book = OutcomeBook()
    for n, (trace, label) in enumerate([("trace-0", "WRONG"), ("trace-1", "RIGHT"), ("trace-2", "RIGHT")]):
        book.add(outcome(trace, SELF, label, source="SUITE", actor="suite", recorded_at_us=n, outcome_id=trace), n)
    steps = {f"trace-{i}": [generation_step(s, f"trace-{i}") for s in range(3)] for i in range(8)}
    prompts = {f"r{i}": f"prompt {i}" for i in range(5)}
    h = assemble(answers, prompts, book, steps, "small")
    assert [(p.request_id, p.self_wrong, p.reference_wrong, p.reference_tokens) for p in h.requests] == [
        ("r0", True, False, 9),
        ("r1", False, None, 0),
    ]
    assert h.requests[0].embedding == (0.25, -0.5, 0.125) and len(h.requests[0].steps) == 3
    assert {p.self_version for p in h.requests} == {SELF}
    assert h.skipped == {
        "cache hit": 1,
        "shadow answer": 1,
        "escalated mid-answer (no finished self answer)": 1,
        "self answer not labelled": 1,
    }


def test_training_refuses_a_history_with_nothing_to_route_on() -> None:
    steps = [generation_step(s, "t") for s in range(3)]
    past = [Past(f"r{i}", f"add: {i}+1", (), i, False, None, steps) for i in range(90)]
    with pytest.raises(EvoError, match="nothing to route on"):
        train_policy(History(past), "r1", None, "")
    with pytest.raises(EvoError, match="needs at least 20"):
        train_policy(History(past[:30]), "r1", None, "")


def _history(n: int, seed: int = 0, reference_known: bool = True) -> History:
    """Requests of three kinds, one in three each: the self model right (calm steps), the reference wins (the self
    model wrong, noisy steps), both wrong (calm steps: the self model is wrong where its tokens look sure)."""
    rng = np.random.default_rng(seed)
    past = []
    for i in range(n):
        kind = i % 3
        steps = [generation_step(s, f"t{i}") for s in range(4)]
        if kind == 1:
            steps = [dict(s, entropy_bits=6.0 + rng.random()) for s in steps]  # type: ignore[misc]
        ref_wrong = (kind == 2) if reference_known else None
        past.append(Past(f"r{i}", f"add: {i}+{kind}", (), i, kind > 0, ref_wrong, steps))  # type: ignore[arg-type]
    return History(past)


def test_training_fits_its_own_gain_probe_on_the_reference_wins() -> None:
    kept: list[RiskProbe] = []

    def keep(probe: RiskProbe) -> str:
        kept.append(probe)
        return "cd" * 32

    trained = train_policy(_history(300), "r1", None, "", keep_probe=keep)
    assert trained.policy.probe_sha256 == "cd" * 32 and len(kept) == 1
    probe = kept[0]
    assert probe.trained_on["label"] == GAIN_LABEL and probe.trained_on["route"] == "r1"
    assert probe.trained_on["traces"] == 150 and probe.trained_on["gains"] == 50  # the fit part: the oldest half
    steps = {kind: _history(3, seed=1).requests[kind].steps for kind in range(3)}
    risk = {kind: probe.score(s) for kind, s in steps.items()}
    # the reference wins where the tokens are noisy; where both are wrong escalating buys nothing: scored low
    assert risk[1] > 0.9 and risk[2] < 0.5 and risk[0] < 0.5, risk
    assert any("gain probe: fitted on 150 traces (50 the reference wins)" in line for line in trained.lines)
    # the gain probe finds where escalating pays; the prompt model scores what the levels certify: self answers wrong
    assert trained.policy.trained_on["prompt_label"] == "self wrong"
    # where the reference's answers are not known, the label is "the self answer is wrong"
    unknown: list[RiskProbe] = []
    train_policy(_history(300, reference_known=False), "r1", None, "", keep_probe=lambda p: unknown.append(p) or "")
    assert unknown[0].trained_on["gains"] == 100 and unknown[0].score(steps[2]) > 0.5
    # a given probe is read as given: nothing fitted
    assert train_policy(_history(300), "r1", probe, "ab" * 32, keep_probe=keep).policy.probe_sha256 == "ab" * 32
    assert len(kept) == 1
    # a risk probe (P(self wrong)) mid-answer: the prompt model learns where the reference wins, as before
    risk = fit_probe(
        np.vstack([trace_features(p.steps, 4, 8) for p in _history(90).requests]),
        np.array([p.self_wrong for p in _history(90).requests]),
        "selfcheck",
        4,
        sketch_dim=8,
    )
    given = train_policy(_history(300), "r1", risk, "ef" * 32, keep_probe=keep).policy
    assert given.probe_sha256 == "ef" * 32 and given.trained_on["prompt_label"] == GAIN_LABEL


def test_a_policy_records_the_self_versions_its_levels_were_certified_on() -> None:
    steps = [generation_step(s, "t") for s in range(3)]
    past = [
        Past(f"r{i}", f"add: {i}+1" + "?" * (i % 7), (), i, i % 3 == 0, None, steps, 0, "small@old" if i < 60 else v)
        for i, v in zip(range(80), ["small@new", "small@newer"] * 40, strict=True)
    ]
    trained = train_policy(History(past), "r1", None, "", levels=(1,))
    assert trained.policy.trained_on["self_versions"] == ["small@new", "small@newer"]  # the certify quarter's only


def test_route_train_and_eval_on_the_real_broker(kafka: str, tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    env = {
        **os.environ,
        "EVOSTREAM_BOOTSTRAP_SERVERS": kafka,
        "EVOSTREAM_GOVERNANCE_TOPIC": f"test-governance-route-{run}",
        "EVOSTREAM_GOVERNANCE_DIR": str(tmp_path / "gov"),
        "EVOSTREAM_ARTIFACTS_DIR": str(tmp_path / "art"),
    }
    lm = load_model("default")
    # the probe the policy reads mid-answer, fitted off-line on traces of other prompts and stored as an artifact
    fit_on = stress_split(300, seed=f"route-probe-{run}") + make_split(f"route-probe-{run}", 10)
    traced = list(run_traced(lm, [e.prompt for e in fit_on], max_new_tokens=16))
    layers, sketch = int(traced[0].steps[0]["num_layers"]), 2 * DEFAULT_DIM
    x = np.vstack([trace_features(t.steps, layers, sketch) for t in traced])
    wrong = np.array([t.output.strip() != e.answer for t, e in zip(traced, fit_on, strict=True)])
    probe = fit_probe(x, wrong, lm.version.split("@")[0], layers, l2=1.0, sketch_dim=sketch)
    folder = tmp_path / "probe"
    folder.mkdir()
    (folder / ARTIFACT_FILE).write_bytes(probe.to_bytes())
    sha = ArtifactStore(tmp_path / "art").put_dir(folder).sha256

    since = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    time.sleep(1.0)
    mixed = stress_split(120, seed=f"route-{run}") + make_split(f"route-{run}", 20)
    examples = sorted(mixed, key=lambda e: hashlib.sha256(e.prompt.encode()).hexdigest())
    answers = serve(kafka, lm, [e.prompt for e in examples], max_new_tokens=16)
    labels = [
        outcome(
            a["trace_id"],
            a["model_version"],
            "RIGHT" if a["output_text"].strip() == e.answer else "WRONG",
            source="SUITE",
            actor="suite",
            recorded_at_us=now_us(),
            outcome_id=f"suite-{a['trace_id']}",
        )
        for e, a in zip(examples, answers, strict=True)
    ]
    publish_outcomes(kafka, labels)
    out = tmp_path / "policy.json"
    cmd = [*CLI, "route", "train", "--route", "r1", "--out", str(out), "--probe", sha, "--since", since]
    trained = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    policy = RoutePolicy.from_bytes(out.read_bytes())
    assert policy.route == "r1" and policy.probe_sha256 == sha and policy.prompt is not None
    assert [g.level for g in policy.gates] == [1, 2, 3, 4]
    assert policy.trained_on["requests"] == len(examples)
    assert policy.trained_on["parts"] == {"fit": 120, "choose": 60, "certify": 60}
    assert policy.trained_on["self_versions"] == [lm.version]
    for g in policy.gates:
        assert {"corpus", "accuracy", "accuracy_lower", "confidence", "self_share", "bound", "certified"} <= set(
            g.evidence
        )
        assert g.evidence["corpus"] == 120 and g.evidence["accuracy_lower"] <= g.evidence["accuracy"]
    printed = trained.stdout.splitlines()
    assert printed[0] == "240 labelled requests: 120 fit the prompt model, 60 choose gates, 60 certify"
    assert [line.split(" ")[1] for line in printed if line.startswith("level ")] == ["1", "2", "3", "4"]
    assert json.loads(out.read_bytes())["format"] == "evostream.route-policy/1"

    # by default the policy reads its own gain probe, fitted on the fit part and kept in the artifact store
    own = tmp_path / "own.json"
    cmd = [*CLI, "route", "train", "--route", "r1", "--out", str(own), "--since", since]
    trained = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    mine = RoutePolicy.from_bytes(own.read_bytes())
    assert mine.probe_sha256 not in ("", sha) and [g.level for g in mine.gates] == [1, 2, 3, 4]
    gain = load_probe(ArtifactStore(tmp_path / "art"), mine.probe_sha256)
    assert gain.trained_on["label"] == GAIN_LABEL and gain.trained_on["traces"] == 120
    assert "gain probe: fitted on 120 traces" in trained.stdout and mine.probe_sha256 in trained.stdout

    done = subprocess.run(
        [*CLI, "route", "eval", "--policy", str(out), "--since", since],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    n_wrong = sum(label["label"] == "WRONG" for label in labels)
    assert lines[0].startswith(f"240 labelled requests; self alone {1 - n_wrong / 240:.3f}, reference alone 1.000")
    rows = [line.split() for line in lines[2:]]
    assert [r[0] for r in rows] == ["1", "2", "3", "4"]
    shares = [float(r[1]) for r in rows]
    for share, target in zip(shares, (0.2, 0.5, 0.8, 0.95), strict=True):
        assert abs(share - target) < 0.15, (shares, done.stdout)
    assert shares == sorted(shares)
