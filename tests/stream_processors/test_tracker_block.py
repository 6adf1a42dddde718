"""The risk fold of a step block (numpy over its rows) against the step-by-step fold it replaces: over many seeded
traces of the shipped policy's model, cut into blocks at random, with NaN layers, loops, entropy spikes, collapses,
blow-ups, replays, a shape change and completions before, between and after the blocks, the states, reports and
alerts are equal (exactly, floats included), and so are the policy's z-scores row by row."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import pytest

from evostream.models.risk_probe import feature_names, fit_probe
from evostream.schemas.blocks import StepColumns, from_steps
from evostream.schemas.samples import generation_step
from evostream.schemas.tensors import pack_f32, step_heads, step_layers
from evostream.stream_processors.fold import Fold
from evostream.stream_processors.risk.policy import Baseline, RiskPolicy, load_policies
from evostream.stream_processors.risk.score import TraceRisk
from evostream.stream_processors.risk.tracker import RiskTracker, ServedProbe

POLICIES = load_policies()
FAMILY = "evostream/t5-tiny-suite"
POLICY = POLICIES[FAMILY]
VERSION = f"{FAMILY}@test"
SPREAD = 1000
"""The step-by-step fold gives row i of the block read at offset o the offset o * SPREAD + i."""


class Trace:
    """A seeded trace of the shipped policy's model: healthy steps around its baselines, and what the seed injects."""

    def __init__(self, seed: int) -> None:
        rng = self.rng = np.random.default_rng(seed)
        self.name = f"t{seed}"
        heads, ratio = np.asarray(POLICY.heads.mean), np.asarray(POLICY.norm_ratio.mean)
        self.heads_mu, self.heads_sd = heads, np.maximum(np.asarray(POLICY.heads.std), POLICY.z_std_floor)
        self.ratio_mu, self.ratio_sd = ratio, np.maximum(np.asarray(POLICY.norm_ratio.std), POLICY.z_std_floor)
        shape = rng.choice(["policy"] * 6 + ["wide", "no-heads", "no-l2", "no-maxabs"])
        self.layers, self.heads = (4, 4) if shape == "wide" else heads.shape[1:]
        self.measure = {"heads": shape != "no-heads", "l2": shape != "no-l2", "maxabs": shape != "no-maxabs"}
        self.n = int(rng.integers(1, 90))
        vocab = int(rng.choice([3, 12, 300]))  # small vocabularies repeat tokens: loop tests at many rows
        self.tokens = [int(t) for t in rng.integers(0, vocab, self.n)]
        self.entropies = np.abs(rng.normal(0.0, POLICY.entropy_bits / 4, self.n))
        self.l2 = np.empty((self.n, self.layers))
        self.head = np.empty((self.n, self.layers, self.heads))
        for i in range(self.n):
            self.l2[i], self.head[i] = self.healthy(i)
        self.nonfinite = np.zeros((self.n, self.layers), dtype=np.int64)
        self.kinds: list[str] = []
        for kind in ("nan", "loop", "hidden", "spike", "ragged", "collapse", "blowup", "inf", "doubles"):
            if rng.random() < 0.2:
                self.kinds.append(kind)
                getattr(self, kind)(int(rng.integers(0, self.n)))

    def healthy(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        rng = self.rng
        if self.layers != self.heads_mu.shape[1]:
            return 20.0 * np.exp(rng.normal(0, 0.3, self.layers)), np.exp(rng.normal(0, 0.3, (self.layers, self.heads)))
        b = min(POLICY.bucket(i), len(self.heads_mu) - 1)
        heads = np.exp(self.heads_mu[b] + rng.normal(0.0, 0.5, self.head.shape[1:]) * self.heads_sd[b])
        l2 = np.empty(self.layers)
        l2[0] = 20.0 * np.exp(rng.normal(0.0, 0.05))
        l2[1:] = l2[0] * np.exp(self.ratio_mu[b] + rng.normal(0.0, 0.5, self.layers - 1) * self.ratio_sd[b])
        return l2, heads

    def nan(self, k: int) -> None:
        first = int(self.rng.integers(0, self.layers))
        self.nonfinite[k, first:] = 1
        self.l2[k, first:] = np.nan

    def inf(self, k: int) -> None:  # a non-finite value the producer did not count: z-scores of NaN and Inf
        self.l2[k, int(self.rng.integers(0, self.layers))] = float(self.rng.choice([np.inf, np.nan]))

    def loop(self, k: int) -> None:
        period = int(self.rng.integers(1, POLICY.repeat_max_period + 1))
        cycle = [int(t) for t in self.rng.integers(1000, 1100, period)]
        for i in range(k, self.n):
            self.tokens[i] = cycle[(i - k) % period]

    def hidden(self, k: int) -> None:
        # hidden states that cycle exactly (period q) under tokens that repeat once (two copies of r fresh ones, never
        # four): only the hidden-state test sees a loop, from the row it has four cycles and the tokens two
        q, r = (int(x) for x in self.rng.integers(1, 4, 2))
        states = [self.l2[k] * np.exp(j * np.arange(self.layers)) for j in range(q)]
        for i in range(k, self.n):
            self.tokens[i] = 2000 + r * ((i - k) // (2 * r)) + (i - k) % r
            self.l2[i] = states[(i - k) % q]

    def spike(self, k: int) -> None:
        end = int(self.rng.integers(k + 1, self.n + 1))
        self.entropies[k:end] = POLICY.entropy_bits * self.rng.uniform(2, 40, end - k)
        if self.rng.random() < 0.3:
            self.entropies[k] = float(self.rng.choice([np.nan, np.inf]))

    def ragged(self, k: int) -> None:  # entropies over many decades: a sum added up in another order rounds apart
        end = int(self.rng.integers(k + 1, self.n + 1))
        self.entropies[k:end] = 10.0 ** self.rng.uniform(-30, 3, end - k)

    def collapse(self, k: int) -> None:  # a few steps, each with some of the heads far below their baseline
        if self.layers != self.heads_mu.shape[1]:
            return
        for i in range(k, min(self.n, k + int(self.rng.integers(1, 4)))):
            b = min(POLICY.bucket(i), len(self.heads_mu) - 1)
            low = self.rng.permutation(self.head[i].size) < self.rng.integers(1, self.head[i].size + 1)
            low = low.reshape(self.head.shape[1:])  # how many: from one head (no collapse) to all, a quarter too
            self.head[i] = np.where(low, np.exp(self.heads_mu[b] - 12.0 * self.heads_sd[b]), self.head[i])

    def blowup(self, k: int) -> None:  # a few steps, each with a layer's norm far above its baseline
        for i in range(k, min(self.n, k + int(self.rng.integers(1, 4)))):
            self.l2[i, 1 + int(self.rng.integers(0, self.layers - 1))] *= 10.0 ** self.rng.uniform(2, 6)

    def doubles(self, k: int) -> None:  # doubled tokens: the hidden-state test runs at these rows
        for i in range(k, min(self.n, k + 6), 2):
            if i + 1 < self.n:
                self.tokens[i + 1] = self.tokens[i]

    def step(self, i: int, model: str = VERSION) -> dict[str, Any]:
        rec = dict(generation_step(i, self.name, self.layers, self.heads, t0_us=1_000_000))
        rec.update(
            model_version=model,
            token_id=self.tokens[i],
            entropy_bits=float(np.float32(self.entropies[i])),
            layer_hidden_l2=pack_f32(self.l2[i]) if self.measure["l2"] else b"",
            layer_hidden_maxabs=pack_f32(self.l2[i] * 0.3) if self.measure["maxabs"] else b"",
            layer_nonfinite=[int(x) for x in self.nonfinite[i]],
            head_attention_entropy=pack_f32(self.head[i]) if self.measure["heads"] else b"",
            attention_signal="OUTPUT_NORM" if self.measure["heads"] else "NONE",
            emitted_at_us=1_000_000 + int(self.rng.integers(0, 10_000)),
        )
        return rec

    def completion(self, count: int, error: bool) -> dict[str, Any]:
        return {
            "trace_id": self.name,
            "request_id": f"req-{self.name}",
            "model_version": VERSION,
            "token_count": count,
            "finish_reason": "ERROR" if error else "STOP",
            "error": "boom" if error else None,
            "completed_at_us": 2_000_000,
        }

    def events(self) -> list[tuple[str, Any, int]]:
        """Blocks (by a random cutting) and the completion, in an order a reader may see them, with replays."""
        rng, steps = self.rng, [self.step(i) for i in range(self.n)]
        if rng.random() < 0.15:  # a block of another model mid-trace: its own policy judges it
            k = int(rng.integers(0, self.n))
            steps[k] = self.step(k, "other@1")
        blocks, i = [], 0
        while i < self.n:
            size = int(rng.choice([1, 2, 3, 4, 7, 16, 33, 64]))
            run = steps[i : i + size]
            model = run[0]["model_version"]  # a block is homogeneous: it ends where the model changes
            run = run[: next((j for j, s in enumerate(run) if s["model_version"] != model), len(run))]
            blocks.append(run)
            i += len(run)
        events: list[tuple[str, Any, int]] = [("block", b, 10 + 3 * k) for k, b in enumerate(blocks)]
        if rng.random() < 0.2:  # a block whose shape does not join the trace's: rejected whole
            k = int(rng.integers(1, len(events) + 1))
            bad = [{**s, "num_heads": self.heads + 1, "head_attention_entropy": b""} for s in blocks[k - 1]]
            events.insert(k, ("block", bad, events[k - 1][2] + 1))
        for _ in range(int(rng.integers(0, 3))):  # replays of blocks read before
            k = int(rng.integers(0, len(events)))
            events.insert(int(rng.integers(k + 1, len(events) + 1)), events[k])
        if rng.random() < 0.85:
            count = self.n if rng.random() < 0.7 else int(rng.integers(1, self.n + 2))
            done = ("completion", self.completion(count, rng.random() < 0.1), 5)
            events.insert(int(rng.integers(0, len(events) + 1)), done)
        return events


def comparable(fold: Fold, offset: int) -> dict[str, Any]:
    """A fold's outcome with the block's offset as the stored one (the step-by-step fold stores its last row's)."""
    state = json.loads(json.dumps(fold.state))  # the table stores and reloads it
    if "step_offset" in state:
        state["step_offset"] //= SPREAD if state["step_offset"] >= SPREAD else 1
    rejected = {k // SPREAD if k >= SPREAD else k: str(e) for k, e in sorted(fold.rejected.items(), reverse=True)}
    return {"state": state, "reports": fold.reports, "alerts": fold.alerts, "duplicates": fold.duplicates, **rejected}


def both(tracker: RiskTracker, events: list[tuple[str, Any, int]]) -> tuple[list[Any], list[Any]]:
    """Each event's outcome folded step by step (``on_steps``) and folded by block (``on_block``)."""
    by_step: Any = None
    by_block: Any = None
    outs: tuple[list[Any], list[Any]] = ([], [])
    for t, (kind, rec, offset) in enumerate(events):
        now = 7_000 + t
        if kind == "completion":
            a = tracker.on_completion(by_step, rec, offset, now)
            b = tracker.on_completion(by_block, rec, offset, now)
        else:
            a = tracker.on_steps(by_step, [(s, offset * SPREAD + i) for i, s in enumerate(rec)], now)
            b = tracker.on_block(by_block, from_steps(rec), offset, now)
        by_step, by_block = json.loads(json.dumps(a.state)), json.loads(json.dumps(b.state))
        outs[0].append(comparable(a, offset))
        outs[1].append(comparable(b, offset))
    return outs


@pytest.mark.parametrize("seeds", [range(0, 150), range(150, 300)])
def test_a_block_folds_to_what_its_steps_fold_to(seeds: range) -> None:
    tracker = RiskTracker(POLICIES)
    seen: dict[str, int] = {}
    for seed in seeds:
        trace = Trace(seed)
        step_by_step, by_block = both(tracker, trace.events())
        for t, (a, b) in enumerate(zip(step_by_step, by_block, strict=True)):
            assert a == b, f"seed {seed} ({trace.kinds}), event {t}"
        for out in step_by_step:
            for r in out["reports"]:
                seen[r["stage"]] = seen.get(r["stage"], 0) + 1
            for flag in {f for r in out["reports"] for f in r["flags"]}:
                seen[flag] = seen.get(flag, 0) + 1
            seen["rejected"] = seen.get("rejected", 0) + any(isinstance(k, int) for k in out)
            seen["duplicates"] = seen.get("duplicates", 0) + (out["duplicates"] > 0)
    # the seeds reach every path they are meant to test, not only healthy traces
    for what in ("EARLY", "FINAL", "nonfinite_hidden", "repetition_loop", "high_entropy", "attention_collapse"):
        assert seen.get(what, 0) >= 3, (what, seen)
    assert seen.get("mid_layer_anomaly", 0) >= 3 and seen["rejected"] >= 3 and seen["duplicates"] >= 3, seen


def test_hidden_state_loops_are_found_at_the_same_step() -> None:
    found = 0
    for seed in range(300, 400):
        trace = Trace(seed)
        trace.hidden(int(trace.rng.integers(0, min(trace.n, 4) if seed % 2 else max(1, trace.n // 2))))  # early too
        step_by_step, by_block = both(RiskTracker(POLICIES), trace.events())
        assert step_by_step == by_block, f"seed {seed}"
        found += any("hidden states repeat" in r["reason"] for out in by_block for r in out["reports"])
    assert found >= 10


def test_a_probe_follows_a_block_as_it_follows_its_steps() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, len(feature_names(3))))
    served = ServedProbe("risk/t5@abc", fit_probe(x, x[:, 0] > 0, FAMILY, 3))
    tracker = RiskTracker(POLICIES)
    tracker.offer(FAMILY, served)
    tracker.take_offers()
    judged = 0
    for seed in range(400, 440):
        step_by_step, by_block = both(tracker, Trace(seed).events())
        assert step_by_step == by_block, f"seed {seed}"
        judged += sum(r["policy"] == served.version for out in by_block for r in out["reports"])
    assert judged >= 10


def test_a_block_replayed_or_of_another_shape_changes_nothing() -> None:
    tracker = RiskTracker(POLICIES)
    trace = Trace(7)
    cols = from_steps([trace.step(i) for i in range(min(trace.n, 5))])
    first = tracker.on_block(None, cols, 10, 0)
    again = tracker.on_block(first.state, cols, 10, 1)
    assert again.duplicates == len(cols) and again.state == first.state and not again.reports
    other = from_steps([{**trace.step(i), "num_heads": 9, "head_attention_entropy": b""} for i in range(5, 7)])
    rejected = tracker.on_block(first.state, other, 11, 2)
    assert list(rejected.rejected) == [11] and rejected.state == first.state
    assert "step 5 of trace t7 has shape" in str(rejected.rejected[11])


def test_a_score_that_reaches_a_threshold_only_once_rounded_alerts_at_the_same_step() -> None:
    """The score is rounded to 6 decimals before it is compared: an unrounded score a few 1e-7 under CRITICAL is
    CRITICAL, and the block fold must halt there too."""
    p, t = POLICY, 12

    def score(entropies: list[float]) -> float:  # ``assess`` unrounded, with high_entropy the only flag it may raise
        m, high = sum(entropies) / len(entropies), sum(e > p.entropy_bits for e in entropies)
        flagged = high >= p.min_steps and high >= p.high_entropy_share * len(entropies)
        return 1.0 - (1.0 - p.entropy_weight * m / (m + p.entropy_bits)) * (1.0 - p.weights["high_entropy"] * flagged)

    high = float(np.float32(1.1 * p.entropy_bits))
    early = [high, 0.0, 0.0] * 3 + [high, 0.0]  # high_entropy from step 6 on, the score under CRITICAL until the last
    assert all(score(early[:i]) < p.critical_score - 1e-3 for i in range(1, t))
    lo, hi = np.float32(0.0).view(np.int32), np.float32(1.0).view(np.int32)  # the least float32 last entropy with
    while hi - lo > 1:  # a score at most 4e-7 under CRITICAL (a bisection of float32 bit patterns)
        mid = np.int32((int(lo) + int(hi)) // 2)
        if score([*early, float(mid.view(np.float32))]) < p.critical_score - 4e-7:
            lo = mid
        else:
            hi = mid
    last = float(hi.view(np.float32))
    assert p.critical_score - 5e-7 < score([*early, last]) < p.critical_score
    trace = Trace(7)
    trace.n, trace.tokens = t, list(range(t))
    trace.entropies = np.array([*early, last])
    trace.nonfinite, trace.l2, trace.head = trace.nonfinite[:t] * 0, trace.l2[:t], trace.head[:t]
    steps = [trace.step(i) for i in range(t)]
    tracker = RiskTracker(POLICIES)
    by_step = tracker.on_steps(None, [(s, i) for i, s in enumerate(steps)], 0)
    by_block = tracker.on_block(None, from_steps(steps), 0, 0)
    assert [(a["severity"], r["step"]) for a, r in zip(by_step.alerts, by_step.reports, strict=True)] == [
        ("WARNING", 6),
        ("CRITICAL", t - 1),
    ]
    assert (by_block.reports, by_block.alerts) == (by_step.reports, by_step.alerts)


def z_rows(policy: RiskPolicy, cols: StepColumns) -> tuple[list[Any], list[Any]]:
    heads = [policy.head_z(int(s["step"]), step_heads(s).astype(np.float64)) for s in cols.rows()]
    norms = [policy.norm_z(int(s["step"]), step_layers(s, "layer_hidden_l2").astype(np.float64)) for s in cols.rows()]
    return heads, norms


@pytest.mark.parametrize(
    "variant",
    ["shipped", "fewer-buckets", "unsorted-buckets", "no-baselines"],
)
def test_the_policys_z_scores_of_many_rows_are_its_z_scores_row_by_row(variant: str) -> None:
    policy = POLICY
    if variant == "fewer-buckets":  # rows past the last baseline get None
        policy = dataclasses.replace(
            POLICY,
            heads=Baseline(POLICY.heads.mean[:2], POLICY.heads.std[:2]),
            norm_ratio=Baseline(POLICY.norm_ratio.mean[:3], POLICY.norm_ratio.std[:3]),
        )
    elif variant == "unsorted-buckets":
        policy = dataclasses.replace(POLICY, position_buckets=[0, 8, 1, 3, 2])
    elif variant == "no-baselines":
        policy = dataclasses.replace(POLICY, heads=Baseline([], []), norm_ratio=Baseline([], []))
    for seed in range(40):
        trace = Trace(1000 + seed)
        start = int(trace.rng.integers(0, trace.n))
        cols = from_steps([trace.step(i) for i in range(start, trace.n)])
        heads, norms = z_rows(policy, cols)
        hz, hok = policy.head_z_many(cols.step, cols.head_attention_entropy.astype(np.float64))
        nz, nok = policy.norm_z_many(cols.step, cols.layer_hidden_l2.astype(np.float64))
        assert [h is not None for h in heads] == hok.tolist() and [n is not None for n in norms] == nok.tolist()
        for i, (h, n) in enumerate(zip(heads, norms, strict=True)):
            assert h is None or np.array_equal(h, hz[i], equal_nan=True)
            assert n is None or np.array_equal(n, nz[i], equal_nan=True)
        assert list(policy.buckets(cols.step)) == [policy.bucket(int(s)) for s in cols.step]


def test_the_cheap_collapse_test_passes_every_block_with_a_low_head() -> None:
    """``may_fall_below`` spares healthy blocks the head z-scores: it must never say no where a z is under the line,
    even for magnitudes a hair either side of it."""
    rng = np.random.default_rng(3)
    floor, line = POLICY.z_std_floor, POLICY.collapse_z
    for bucket in range(len(POLICY.heads.mean)):
        mu, sd = np.asarray(POLICY.heads.mean[bucket]), np.maximum(np.asarray(POLICY.heads.std[bucket]), floor)
        edge = np.exp(mu + line * sd)  # the magnitude whose z is the line, about
        for _ in range(300):  # every head well above the line but one, a hair above or below it
            heads = edge[None] * 1.01
            cell = (0, *(int(rng.integers(0, k)) for k in edge.shape))
            heads[cell] = edge[cell[1:]] * (1 + rng.choice([-1, 1]) * 10.0 ** rng.uniform(-9, -3))
            heads = heads.astype("f4")
            z, _ = POLICY.heads.z_rows(bucket, np.log(np.abs(heads.astype(np.float64)) + 1e-6), floor)
            if (z < line).any():
                assert POLICY.heads.may_fall_below(bucket, heads, floor, line)
        assert not POLICY.heads.may_fall_below(bucket, (edge * 1.01).astype("f4")[None], floor, line)


def test_update_block_folds_to_the_state_update_folds_to() -> None:
    for seed in range(500, 560):
        trace = Trace(seed)
        steps = [trace.step(i) for i in range(trace.n)]
        cols, at = from_steps(steps), 0
        one, block = TraceRisk(POLICY), TraceRisk(POLICY)
        while at < trace.n:  # random cuts, and the states stored and reloaded at some of them
            end, _ = block.update_block(cols, at, at + int(trace.rng.integers(1, 20)))
            for s in steps[at:end]:
                one.update(s)
            at = end
            if trace.rng.random() < 0.5:
                one = TraceRisk(POLICY, json.loads(json.dumps(one.to_state())))
                block = TraceRisk(POLICY, json.loads(json.dumps(block.to_state())))
            assert block.to_state() == one.to_state(), f"seed {seed}, {at} steps"
            assert block.assess() == one.assess()
