"""The risk policy of a model family: every threshold, baseline and weight the score uses, where each came from
(``notes``: fitted by ``stream_processors.risk.calibrate`` or hand-set), and where the shipped policy files live."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from evostream.core.errors import PolicyError
from evostream.stream_processors.policy_file import check_fields

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]
EPS = 1e-6
"""Keeps log(|x| + EPS) finite for exact zeros: a numerical guard, not a tunable."""


def position_bucket(step: int, buckets: Sequence[int] = (0, 1, 2, 3, 8)) -> int:
    """Index of the last bucket start at or below ``step``."""
    b = 0
    for i, lo in enumerate(buckets):
        if step >= lo:
            b = i
    return b


@dataclass(frozen=True)
class Baseline:
    """Mean and standard deviation per position bucket of a per-layer (or per-layer-per-head) log statistic."""

    mean: list[Any]
    std: list[Any]

    def z(self, bucket: int, values: F64, std_floor: float) -> F64 | None:
        if not self.mean or bucket >= len(self.mean):
            return None
        mu, sd = np.asarray(self.mean[bucket]), np.asarray(self.std[bucket])
        if mu.shape != values.shape:
            return None
        out: F64 = (values - mu) / np.maximum(sd, std_floor)
        return out

    def z_many(self, buckets: int | I64, values: F64, std_floor: float) -> tuple[F64, Mask]:
        """``z`` for many rows at once (row i in bucket ``buckets[i]``, or all in bucket ``buckets``), equal to it row
        by row: the z rows, and which rows have one (``z`` gives None for the others, whose z rows are 0)."""
        out, ok = self.z_rows(buckets, values, std_floor)
        return out, np.ones(len(values), dtype=np.bool_) if ok is None else ok

    def z_rows(self, buckets: int | I64, values: F64, std_floor: float) -> tuple[F64, Mask | None]:
        """``z_many``, with None for "every row" (the usual block: all rows in one bucket that has a baseline)."""
        if isinstance(buckets, int):
            found = self._bucket(buckets, values.shape[1:], std_floor)
            if found is None:
                return np.zeros(values.shape), np.zeros(len(values), dtype=np.bool_)
            out: F64 = np.subtract(values, found[0])
            np.divide(out, found[1], out=out)
            return out, None
        if not self.mean or not len(values):
            return np.zeros(values.shape), np.zeros(len(values), dtype=np.bool_)
        gather = len(self.std) >= len(self.mean) and np.maximum.reduce(buckets) < len(self.mean)
        if gather:  # every row's bucket has a baseline slot: each row's mean and sd gathered
            mu, sd, has = self._stacked(values.shape[1:], std_floor)
            ok = has[buckets]
            out = np.subtract(values, mu[buckets])
            np.divide(out, sd[buckets], out=out)
            if not np.logical_and.reduce(ok):
                out[~ok] = 0.0
            return out, ok
        out = np.zeros(values.shape)
        ok = np.zeros(len(values), dtype=np.bool_)
        for b in sorted(set(buckets.tolist())):
            found = self._bucket(b, values.shape[1:], std_floor)
            if found is not None:
                rows = buckets == b
                out[rows] = (values[rows] - found[0]) / found[1]
                ok[rows] = True
        return out, ok

    def may_fall_below(self, buckets: int | I64, values: npt.NDArray[Any], std_floor: float, z: float) -> bool:
        """False only where no row's ``z_rows`` of ``log_magnitude(values)`` can be below ``z``: every magnitude is at
        or above the one whose log is ``z`` sd under the mean, with a margin far wider than the rounding of ``z``
        (a cheap test that spares a healthy block the logs and z-scores)."""
        if not isinstance(buckets, int):
            return True
        found = self._bucket(buckets, values.shape[1:], std_floor)
        if found is None:
            return False  # no baseline: z_rows gives no row a z
        key = (buckets, std_floor, z)
        floor = self._floors.get(key)
        if floor is None:
            mu, sd = found
            edge = mu + z * sd
            floor = self._floors[key] = np.exp(edge + 1e-6 * (1.0 + np.abs(mu) + np.abs(z * sd)))
        return bool(np.less(np.abs(values), floor).any())

    @cached_property
    def _floors(self) -> dict[tuple[int, float, float], F64]:
        return {}

    def _bucket(self, bucket: int, shape: tuple[int, ...], std_floor: float) -> tuple[F64, F64] | None:
        """The mean and floored sd of ``bucket`` as ``z`` uses them, where ``z`` has a baseline of that ``shape``."""
        if not self.mean or bucket >= len(self.mean):
            return None
        table = self._tables.get(std_floor)
        if table is None:  # made once per floor: ``z`` makes them per call
            table = self._tables[std_floor] = [
                (np.asarray(mu, dtype=np.float64), np.maximum(np.asarray(sd, dtype=np.float64), std_floor))
                for mu, sd in zip(self.mean, self.std, strict=False)
            ]
        mu, sd = table[bucket]
        return (mu, sd) if mu.shape == shape else None

    def _stacked(self, shape: tuple[int, ...], std_floor: float) -> tuple[F64, F64, Mask]:
        """Every bucket's mean and floored sd stacked ([bucket, *shape]), and which buckets have that shape (the
        others hold 0 and 1)."""
        key = (shape, std_floor)
        stacked = self._stacks.get(key)
        if stacked is None:
            found = [self._bucket(b, shape, std_floor) for b in range(len(self.mean))]
            mu = np.stack([f[0] if f is not None else np.zeros(shape) for f in found])
            sd = np.stack([f[1] if f is not None else np.ones(shape) for f in found])
            stacked = self._stacks[key] = (mu, sd, np.asarray([f is not None for f in found]))
        return stacked

    @cached_property
    def _stacks(self) -> dict[tuple[tuple[int, ...], float], tuple[F64, F64, Mask]]:
        return {}

    @cached_property
    def _tables(self) -> dict[float, list[tuple[F64, F64]]]:
        return {}


FLAGS = ("nonfinite_hidden", "repetition_loop", "mid_layer_anomaly", "attention_collapse", "high_entropy")

HAND_SET_NOTES: dict[str, str] = {
    "position_buckets": "hand-set: decoding positions 0, 1, 2, 3-7 and 8+ get their own baselines, because a "
    "seq2seq decoder's first steps look unlike its later ones; finer buckets would starve on short answers",
    "z_std_floor": "hand-set: a statistic that never varied on the reference (sd 0) is judged against this sd "
    "instead, so one ulp of change is not an infinite z",
    "weights": "hand-set: how far each flag alone moves the score (noisy-OR); a non-finite state is certain, a "
    "loop nearly so, the statistical flags are evidence rather than proof",
    "entropy_weight": "hand-set: the most the continuous mean-entropy term adds to the score (it approaches this "
    "as mean entropy grows, half-way at entropy_bits), so scores rank unflagged traces too; whether it alone "
    "can alert depends on the fitted alert_score",
    "entropy_bits": "hand-set: uncalibrated fallback, well above the healthy entropy of small models",
    "high_entropy_share": "hand-set: high_entropy needs this share of the steps, so one hesitant token is not a flag",
    "min_steps": "hand-set: and at least this many steps, so a 1-token answer cannot be 'mostly uncertain'",
    "repeat_window": "hand-set: tokens (and hidden signatures) kept per trace for the loop test; bounds the state",
    "repeat_max_period": "hand-set: longest loop period looked for",
    "repeat_min_cycles": "hand-set: cycles before a period counts as a loop; 4 keeps doubled letters and short "
    "legitimate repeats out",
    "hidden_repeat_ratio": "hand-set: steps p apart 'repeat' when their hidden signatures are this much closer than "
    "the window's median distance between steps up to 2 * repeat_max_period apart",
    "collapse_z": "hand-set: uncalibrated fallback",
    "collapse_head_share": "hand-set: attention_collapse needs this share of all heads low on one step, so one "
    "quiet head is not a collapse",
    "blowup_z": "hand-set: uncalibrated fallback",
    "alert_score": "hand-set: uncalibrated fallback: any one flag alerts",
    "critical_score": "hand-set: uncalibrated fallback: two flags together are CRITICAL",
    "flag_rate": "hand-set: calibration target: share of healthy reference traces allowed to raise each "
    "statistical flag (high_entropy, attention_collapse, mid_layer_anomaly)",
    "alert_rate": "hand-set: calibration target: share of healthy reference traces allowed to alert (WARNING or "
    "worse, early or final)",
    "critical_rate": "hand-set: calibration target: share of healthy reference traces allowed to be CRITICAL",
    "z_margin": "hand-set: the fitted z thresholds are pushed this factor beyond the reference tail, because the "
    "baselines are fitted on the same steps (in-sample z is optimistic)",
    "heads": "hand-set: uncalibrated fallback has no baseline (attention_collapse cannot fire)",
    "norm_ratio": "hand-set: uncalibrated fallback has no baseline (mid_layer_anomaly cannot fire)",
}
"""Why each number of the uncalibrated fallback is what it is; the calibrator replaces the notes of what it fits."""


@dataclass(frozen=True)
class RiskPolicy:
    """Thresholds for one model family; ``name`` (with its version) is quoted in every alert.

    The defaults are the uncalibrated fallback. ``notes`` maps every tunable field (``tunable_fields()``) to a line
    that starts "fitted: " (how, from what) or "hand-set: " (and why)."""

    name: str = "uncalibrated@1"
    family: str = "*"
    position_buckets: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 8])
    z_std_floor: float = 0.05
    weights: dict[str, float] = field(
        default_factory=lambda: {
            "nonfinite_hidden": 1.0,
            "repetition_loop": 0.7,
            "mid_layer_anomaly": 0.6,
            "attention_collapse": 0.5,
            "high_entropy": 0.5,
        }
    )
    entropy_weight: float = 0.3
    entropy_bits: float = 4.0
    high_entropy_share: float = 0.3
    min_steps: int = 3
    repeat_window: int = 48
    repeat_max_period: int = 8
    repeat_min_cycles: int = 4
    hidden_repeat_ratio: float = 0.05
    collapse_z: float = -6.0
    collapse_head_share: float = 0.25
    blowup_z: float = 8.0
    alert_score: float = 0.5
    critical_score: float = 0.8
    flag_rate: float = 0.005
    alert_rate: float = 0.005
    critical_rate: float = 0.001
    z_margin: float = 1.25
    heads: Baseline = field(default_factory=lambda: Baseline([], []))
    """log(head signal + eps) per bucket, [layer][head]."""
    norm_ratio: Baseline = field(default_factory=lambda: Baseline([], []))
    """log(hidden L2 of layer l / hidden L2 of layer 0) per bucket, [layer]."""
    notes: dict[str, str] = field(default_factory=lambda: dict(HAND_SET_NOTES))
    calibration: dict[str, Any] = field(default_factory=dict)
    """Where the numbers came from: model version, traces, steps, date."""

    def __post_init__(self) -> None:
        missing = set(FLAGS) - set(self.weights)
        if missing:  # a hand-edited policy file would otherwise fail on the first trace that raises the flag
            raise PolicyError(f"risk policy {self.name}: no weight for {sorted(missing)}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str, source: str = "<json>") -> RiskPolicy:
        """A policy file holds every field but ``calibration``: a missing one is refused, not filled with the code
        default, which is the uncalibrated fallback's number and would be quoted as this policy's own."""
        d: dict[str, Any] = json.loads(text)
        required = ("name", "family", *tunable_fields(), "notes")
        check_fields(d, (f.name for f in fields(cls)), required, "risk", source)
        d["heads"] = Baseline(**d["heads"])
        d["norm_ratio"] = Baseline(**d["norm_ratio"])
        return cls(**d)

    def bucket(self, step: int) -> int:
        return position_bucket(step, self.position_buckets)

    def buckets(self, steps: I64) -> I64:
        """``bucket`` of each of ``steps``."""
        starts = self._sorted_starts
        if starts is not None:
            found: I64 = np.searchsorted(starts, steps, side="right") - 1
            return np.maximum(found, 0)
        out: I64 = np.zeros(len(steps), dtype=np.int64)  # unsorted starts: the last one at or below wins, as in bucket
        for i, lo in enumerate(self.position_buckets):
            out[steps >= lo] = i
        return out

    def row_buckets(self, steps: I64) -> int | I64:
        """``buckets``, or the one bucket of all ``steps`` where they are all at or past every bucket start."""
        if self.position_buckets and len(steps) and np.minimum.reduce(steps) >= self._last_start:
            return len(self.position_buckets) - 1
        return self.buckets(steps)

    @cached_property
    def score_bounded(self) -> bool:
        """Whether a score only grows with the mean entropy and with each flag raised, so that the score of the
        highest mean entropy with every flag raised bounds the score of a trace's steps."""
        weights = self.weights.values()
        return self.entropy_bits > 0 and self.entropy_weight >= 0 and all(0 <= w <= 1 for w in weights)

    @cached_property
    def _last_start(self) -> Any:
        return max(self.position_buckets)

    @cached_property
    def _sorted_starts(self) -> npt.NDArray[Any] | None:
        """The bucket starts as an array where they ascend (then a search finds a step's bucket), else None."""
        starts = np.asarray(self.position_buckets)
        return starts if len(starts) and bool((starts[1:] >= starts[:-1]).all()) else None

    def head_z(self, step: int, heads: F64) -> F64 | None:
        """z of log(head signal) against this decoding position's baseline; None without a matching baseline."""
        return self.heads.z(self.bucket(step), log_magnitude(heads), self.z_std_floor)

    def head_z_many(self, steps: I64, heads: F64) -> tuple[F64, Mask]:
        """``head_z`` of many steps (``heads`` [n, layers, heads]) at once, equal to it row by row: the z rows, and
        which rows have one (``head_z`` gives None for the others)."""
        return self.heads.z_many(self.row_buckets(steps), log_magnitude(heads), self.z_std_floor)

    def norm_z_many(self, steps: I64, l2: F64) -> tuple[F64, Mask]:
        """``norm_z`` of many steps (``l2`` [n, layers]) at once, equal to it row by row: the z rows, and which rows
        have one (``norm_z`` gives None for the others)."""
        z, ok = self.norm_z_logs(self.row_buckets(steps), log_magnitude(l2))
        return z, np.ones(len(l2), dtype=np.bool_) if ok is None else ok

    def norm_z_logs(self, buckets: int | I64, logs: F64) -> tuple[F64, Mask | None]:
        """``norm_z_many`` from the steps' buckets and ``log_magnitude(l2)``, for a caller that has both already
        (``Baseline.z_rows``: None for every row)."""
        if logs.ndim != 2 or logs.shape[1] < 2:
            return np.zeros((len(logs), 0)), np.zeros(len(logs), dtype=np.bool_)
        return self.norm_ratio.z_rows(buckets, logs[:, 1:] - logs[:, :1], self.z_std_floor)

    def entropy_alone_alerts_at(self) -> float | None:
        """Mean entropy (bits) from which the continuous entropy term alone, with no flag raised, reaches
        alert_score: entropy_weight * m / (m + entropy_bits) >= alert_score solved for m. None when alert_score is
        not below entropy_weight (the term alone never alerts). Below all flags, the alert is this threshold."""
        w, a = self.entropy_weight, self.alert_score
        return a * self.entropy_bits / (w - a) if 0 < a < w else None

    def norm_z(self, step: int, l2: F64) -> F64 | None:
        """z of log(hidden L2 of layers 1.. / layer 0) against this position's baseline."""
        if len(l2) < 2:
            return None
        return self.norm_ratio.z(self.bucket(step), log_magnitude(l2[1:]) - log_magnitude(l2[:1]), self.z_std_floor)


def tunable_fields() -> tuple[str, ...]:
    """The RiskPolicy fields that hold a number someone chose or fitted (all but identity and bookkeeping)."""
    return tuple(f.name for f in fields(RiskPolicy) if f.name not in ("name", "family", "notes", "calibration"))


POLICY_DIR = Path(__file__).parent / "policies"


def family_of(model_version: str) -> str:
    """``name@hash`` -> ``name``."""
    return model_version.split("@", 1)[0]


def policy_path(family: str, folder: Path = POLICY_DIR) -> Path:
    """Where the policy of ``family`` lives: its name with anything unsafe in a file name replaced by ``__``."""
    return folder / (re.sub(r"[^A-Za-z0-9._-]+", "__", family) + ".json")


def load_policies(folder: Path = POLICY_DIR) -> dict[str, RiskPolicy]:
    """Every ``*.json`` policy in ``folder``, by family."""
    out = {}
    for path in sorted(folder.glob("*.json")):
        try:
            p = RiskPolicy.from_json(path.read_text(encoding="utf-8"), str(path))
        except (ValueError, TypeError) as e:  # malformed JSON, a missing or unknown field: name the file
            raise PolicyError(f"{path}: not a risk policy: {e}") from e
        out[p.family] = p
    return out


def policy_for(policies: Mapping[str, RiskPolicy], model_version: str) -> RiskPolicy:
    return policies.get(family_of(model_version)) or policies.get("*") or RiskPolicy()


def log_magnitude(x: npt.ArrayLike) -> F64:
    """log(|x| + eps): the scale on which baselines and signatures are compared."""
    return np.log(np.abs(np.asarray(x, dtype=np.float64)) + EPS)
