"""The drift policy of a model family: window sizes it needs, test levels and permutation counts, each fitted or
hand-set (its ``notes`` say which), and where the shipped policy files live."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from evostream.core.errors import PolicyError
from evostream.stream_processors.policy_file import check_fields

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class DriftPolicy:
    """When each statistic fires, per model family. Shipped as config in ``stream_processors/drift/policies/``
    (``load_drift_policies``); these code defaults are only the fallback when that folder holds no file. The
    thresholds mostly fit themselves to each model's reference window (permutation null, resampled vocabulary
    noise, chi-square PSI null): the numbers here are their significance levels, floors and sizes."""

    name: str = "drift-uncalibrated@1"
    family: str = "*"

    mmd_alpha: float = 0.001
    """Significance of the permutation test on MMD². Small, because a service tests window after window: at 0.001 a
    stable stream fires about once in a thousand windows."""
    mmd_permutations: int = 2000
    js_bits: float = 0.15
    """Jensen-Shannon divergence of generated tokens, bits (0..1): the floor of its threshold."""
    new_token_rate: float = 0.05
    """Share of generated tokens absent from the reference vocabulary: the floor of its threshold."""
    vocabulary_resamples: int = 400
    """Both vocabulary statistics fire above the larger of their floor and the largest value seen when a pseudo-
    reference and a pseudo-window of the same sizes are drawn from the reference completions (with replacement):
    small windows of few tokens are noisy, and whole completions are resampled because their tokens go together."""
    psi_watch: float = 0.1
    psi_shift: float = 0.25
    psi_alpha: float = 0.001
    """PSI of small windows is noisy (about chi2(k-1) * (1/n + 1/m) under no shift); it fires above the larger of
    ``psi_shift`` and that null's (1 - psi_alpha) quantile."""
    intent_clusters: int = 6
    min_samples: int = 20
    """A window with fewer completions is not judged."""
    notes: dict[str, str] = field(default_factory=dict)
    """Per tunable field: "fitted: ..." (how, from what) or "hand-set: ..." (why)."""

    @classmethod
    def tunable(cls) -> tuple[str, ...]:
        """The fields that change what fires (everything but the policy's identity and its notes)."""
        return tuple(f.name for f in fields(cls) if f.name not in ("name", "family", "notes"))

    @classmethod
    def from_json(cls, text: str, source: str = "<json>") -> DriftPolicy:
        d: dict[str, Any] = json.loads(text)
        check_fields(d, (f.name for f in fields(cls)), ("name", "family", *cls.tunable(), "notes"), "drift", source)
        return cls(**d)

    def __post_init__(self) -> None:
        if self.mmd_permutations * self.mmd_alpha < 1:
            raise PolicyError(
                f"{self.mmd_permutations} permutations cannot reach p < {self.mmd_alpha}: the smallest "
                f"permutation p-value is 1/{self.mmd_permutations + 1}"
            )


DRIFT_POLICY_DIR = Path(__file__).parent / "policies"


def load_drift_policies(folder: Path = DRIFT_POLICY_DIR) -> dict[str, DriftPolicy]:
    """Every ``*.json`` drift policy in ``folder``, by family ("*" is the fallback); the code defaults only when the
    folder holds no file."""
    out = {}
    for path in sorted(folder.glob("*.json")):
        try:
            p = DriftPolicy.from_json(path.read_text(encoding="utf-8"), str(path))
        except (ValueError, TypeError) as e:  # malformed JSON or a value of the wrong type: name the file
            raise PolicyError(f"{path}: not a drift policy: {e}") from e
        out[p.family] = p
    return out or {"*": DriftPolicy()}


def drift_policy_for(policies: Mapping[str, DriftPolicy], model_version: str) -> DriftPolicy:
    """The policy of the version's family (``name@hash`` -> ``name``), else the "*" one, else the code defaults."""
    return policies.get(model_version.split("@", 1)[0]) or policies.get("*") or DriftPolicy()
