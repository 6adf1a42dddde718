"""A learned probe in the risk tracker: offered, taken between batches, judging the traces it followed whole and
naming itself in their reports; a trace it joined mid-way, or a family without one, keeps the hand-set policy."""

from __future__ import annotations

import numpy as np

from evostream.models.risk_probe import FeatureSums, feature_names, fit_probe
from evostream.schemas.samples import generation_step
from evostream.stream_processors.risk.policy import RiskPolicy
from evostream.stream_processors.risk.tracker import RiskTracker, ServedProbe

FAMILY = "fam"
VERSION = "fam@1"


def steps(trace: str, n: int = 4) -> list[tuple[dict[str, object], int]]:
    out = []
    for i in range(n):
        s = dict(generation_step(i, trace, layers=2, heads=2))
        s["model_version"] = VERSION
        out.append((s, i))
    return out


def completion(trace: str, n: int = 4) -> dict[str, object]:
    return {"trace_id": trace, "request_id": f"r-{trace}", "model_version": VERSION, "token_count": n}


def a_probe(version: str = "risk/fam@abc") -> ServedProbe:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, len(feature_names(2))))
    wrong = x[:, 0] > 0
    return ServedProbe(version, fit_probe(x, wrong, FAMILY, 2))


def final(tracker: RiskTracker, trace: str, state: dict[str, object] | None = None) -> dict[str, object]:
    folded = tracker.on_steps(state, steps(trace), 1)
    out = tracker.on_completion(folded.state, completion(trace), 0, 2)
    (report,) = [r for r in out.reports if r["stage"] == "FINAL"]
    return report


def test_an_offer_serves_from_the_next_batch_and_names_its_version() -> None:
    tracker = RiskTracker({FAMILY: RiskPolicy()})
    served = a_probe()
    tracker.offer(FAMILY, served)
    assert final(tracker, "before")["policy"] == RiskPolicy().name  # not taken yet: the hand-set policy judges
    assert tracker.take_offers() == [FAMILY]
    report = final(tracker, "after")
    assert report["policy"] == served.version
    sums = FeatureSums(2)
    for s, _ in steps("after"):
        sums.update(s)
    assert report["score"] == round(float(served.probe.probability(sums.features())[0]), 6)
    assert "learned probe: P(wrong)" in str(report["reason"])


def test_a_trace_the_probe_joined_mid_way_keeps_the_hand_set_policy() -> None:
    tracker = RiskTracker({FAMILY: RiskPolicy()})
    first_half = tracker.on_steps(None, steps("mid")[:2], 1)
    tracker.offer(FAMILY, a_probe())
    tracker.take_offers()
    rest = tracker.on_steps(first_half.state, steps("mid")[2:], 1)
    out = tracker.on_completion(rest.state, completion("mid"), 0, 2)
    assert [r["policy"] for r in out.reports if r["stage"] == "FINAL"] == [RiskPolicy().name]


def test_withdrawing_the_probe_brings_the_hand_set_policy_back() -> None:
    tracker = RiskTracker({FAMILY: RiskPolicy()})
    tracker.offer(FAMILY, a_probe())
    tracker.take_offers()
    tracker.offer(FAMILY, None)
    tracker.take_offers()
    assert final(tracker, "t")["policy"] == RiskPolicy().name


def test_the_running_sums_round_trip_through_the_state() -> None:
    whole, split = FeatureSums(2), FeatureSums(2)
    trace = [s for s, _ in steps("t", 6)]
    for s in trace:
        whole.update(s)
    for s in trace[:3]:
        split.update(s)
    resumed = FeatureSums(2, split.to_state())
    for s in trace[3:]:
        resumed.update(s)
    assert np.array_equal(whole.features(), resumed.features())
    entropy = np.array([float(s["entropy_bits"]) for s in trace])
    names = feature_names(2)
    assert np.isclose(whole.features()[names.index("entropy_mean")], entropy.mean())
    assert np.isclose(whole.features()[names.index("entropy_std")], entropy.std())
