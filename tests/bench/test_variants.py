"""The rollout benchmark's candidates: the healthy one answers as the incumbent does, the faulted one does not."""

from __future__ import annotations

from pathlib import Path

from bench.variants import FAULTED_NOISE, HEALTHY_NOISE, build
from evostream.wiring.governed import default_version


def test_healthy_variant_is_a_new_version_that_answers_as_the_incumbent(tmp_path: Path) -> None:
    v = build(tmp_path / "healthy", HEALTHY_NOISE, seed=1)
    assert v.version != default_version() and v.version.startswith("evostream/t5-tiny-suite@")
    assert v.accuracy["mean"] >= 0.95


def test_faulted_variant_breaks_most_answers(tmp_path: Path) -> None:
    v = build(tmp_path / "faulted", FAULTED_NOISE, seed=1)
    assert v.accuracy["mean"] <= 0.3
