"""The risk probe: features from steps, a deterministic fit, canonical bytes, and it learns what it is shown."""

from __future__ import annotations

import numpy as np
import pytest

from evostream.models.risk_probe import ProbeError, RiskProbe, feature_names, fit_probe, trace_features
from evostream.schemas.samples import generation_step


def _data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[type-arg]
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(feature_names(2))))
    wrong = (x[:, 0] + 0.5 * rng.normal(size=n)) > 0.3  # "entropy_mean" carries the signal
    return x, wrong


def test_features_of_steps_have_the_named_length_and_are_finite() -> None:
    steps = [generation_step(i, "t", layers=4, heads=4) for i in range(5)]
    x = trace_features(steps, 4)
    assert x.shape == (len(feature_names(4)),)
    assert np.isfinite(x).all()
    assert x[feature_names(4).index("log_steps")] == pytest.approx(np.log1p(5))
    with pytest.raises(ProbeError):
        trace_features([], 4)


def test_the_fit_finds_the_signal_and_is_deterministic() -> None:
    x, wrong = _data(400)
    a = fit_probe(x, wrong, "fam", 2, trained_on={"outcomes": "0-399"})
    b = fit_probe(x, wrong, "fam", 2, trained_on={"outcomes": "0-399"})
    assert a.to_bytes() == b.to_bytes()
    assert abs(a.weights[0]) == max(abs(w) for w in a.weights)
    tx, twrong = _data(400, seed=1)
    p = a.probability(tx)
    assert ((p > 0.5) == twrong).mean() > 0.8


def test_bytes_round_trip_and_bad_bytes_are_refused() -> None:
    x, wrong = _data(100)
    probe = fit_probe(x, wrong, "fam", 2, l2=3.0)
    again = RiskProbe.from_bytes(probe.to_bytes())
    assert again.to_bytes() == probe.to_bytes()
    assert np.allclose(again.probability(x), probe.probability(x), atol=1e-9)
    for bad in (b"{}", b"not json", b'{"format": "evostream.risk-probe/1"}'):
        with pytest.raises(ProbeError):
            RiskProbe.from_bytes(bad)


def test_task_intercepts_keep_the_weights_off_which_task_it_is() -> None:
    rng = np.random.default_rng(2)
    n = 600
    tasks = np.array(["a", "b"] * (n // 2))
    x = rng.normal(size=(n, len(feature_names(2))))
    x[:, 1] = (tasks == "b") * 3.0  # feature 1 says which task; task b is mostly wrong
    wrong = (tasks == "b") & (rng.random(n) < 0.9) | ((tasks == "a") & (x[:, 0] > 1.0))
    pooled = fit_probe(x, wrong, "fam", 2)
    within = fit_probe(x, wrong, "fam", 2, groups=list(tasks))
    assert abs(pooled.weights[1]) > abs(within.weights[1])


def test_one_class_or_wrong_shape_is_refused() -> None:
    x, _ = _data(10)
    with pytest.raises(ProbeError, match="both"):
        fit_probe(x, np.zeros(10, dtype=bool), "fam", 2)
    with pytest.raises(ProbeError, match="features"):
        fit_probe(x[:, :3], np.arange(10) % 2 == 0, "fam", 2)


def test_the_sketch_features_are_its_mean_and_last_step() -> None:
    from evostream.models.risk_probe import FeatureSums, sketch_dim_of
    from evostream.schemas.tensors import unpack_f16

    steps = [generation_step(i, "t", layers=4, heads=4) for i in range(3)]
    dim = sketch_dim_of(steps[0])
    assert dim == 8
    x = trace_features(steps, 4, dim)
    names = feature_names(4, dim)
    assert x.shape == (len(names),) and names[-1] == f"sketch_last_{dim - 1}"
    sketches = np.stack([unpack_f16(s["hidden_sketch"]) for s in steps])
    assert np.allclose(x[names.index("sketch_mean_0") : names.index("sketch_last_0")], sketches.mean(0), atol=1e-6)
    assert np.allclose(x[names.index("sketch_last_0") :], sketches[-1])
    half = FeatureSums(4, sketch_dim=dim)
    half.update(steps[0])
    resumed = FeatureSums(4, half.to_state(), dim)
    for s in steps[1:]:
        resumed.update(s)
    assert np.array_equal(resumed.features(), x)
    assert np.array_equal(trace_features(steps, 4), x[: len(feature_names(4))])  # without: the pooled ones only
