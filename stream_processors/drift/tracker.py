"""What the drift agent does with one completion, as a pure function of the model version's stored state.

Per model version: the first ``reference_size`` completions form the reference window (a new version is a new
reference, which is what a promotion means); after it, every ``window_size`` completions are compared with it and
give one DriftReport. Embeddings are kept as base64 float16 (768 bytes per 384-d prompt) so the whole state stays
one small changelog value, written with the input offset it includes, the trace ids of its windows and of the
completions that left them last: a replay, or a completion forwarded twice by the repartition, is recognised and
skipped.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from evostream.core.errors import PolicyError
from evostream.stream_processors.checks import check_embedding_joins
from evostream.stream_processors.drift.policy import DriftPolicy, drift_policy_for
from evostream.stream_processors.drift.statistics import DriftDetector, DriftResult, Window
from evostream.stream_processors.fold import Fold


@dataclass(frozen=True)
class DriftWindows:
    """Window sizes, in completions; the values come from Settings (drift_reference_size, drift_window_size)."""

    reference_size: int
    window_size: int


STATE_LAYOUT = 1
"""Version of the stored state's layout: raise it when the layout changes, so a worker never reads old state."""


def table_name(windows: DriftWindows) -> str:
    """The drift table (and, prefixed with the app id, its changelog topic): it names the state's layout and the
    window sizes, so a worker started with other sizes begins a new state rather than reading windows cut to the
    old ones."""
    return f"drift-models-v{STATE_LAYOUT}-ref{windows.reference_size}-win{windows.window_size}"


def _pack(embedding: Sequence[float]) -> str:
    return base64.b64encode(np.asarray(embedding, dtype="<f2").tobytes()).decode()


def _unpack(text: str) -> list[float]:
    values: list[float] = np.frombuffer(base64.b64decode(text), dtype="<f2").astype(np.float64).tolist()
    return values


def embedding_dim(state: Mapping[str, Any] | None) -> int | None:
    """The embedding size of a model version's windows (None before its first embedding)."""
    if state is None:
        return None
    kept = state["reference"]["emb"] or state["window"]["emb"]
    return len(base64.b64decode(kept[0])) // 2 if kept else None


def _empty() -> dict[str, Any]:
    return {"emb": [], "tokens": {}, "start_us": 0, "end_us": 0, "traces": [], "token_lists": []}


def _window(w: Mapping[str, Any]) -> Window:
    out = Window(
        tokens=Counter({int(k): v for k, v in w["tokens"].items()}), start_us=w["start_us"], end_us=w["end_us"]
    )
    out.embeddings = [_unpack(e) for e in w["emb"]]
    out.token_lists = [list(t) for t in w.get("token_lists", [])]
    return out


class DriftTracker:
    """Windows of completions per model version, judged with the drift policy of the version's family: one
    ``DriftPolicy`` for every family, or policies by family ("*" the fallback); by default the shipped files
    (``load_drift_policies``)."""

    def __init__(self, policy: DriftPolicy | Mapping[str, DriftPolicy], windows: DriftWindows) -> None:
        self.policies = {"*": policy} if isinstance(policy, DriftPolicy) else dict(policy)
        self.windows = windows
        for p in self.policies.values():
            if self.windows.window_size < p.min_samples:
                raise PolicyError(
                    f"window_size {self.windows.window_size} is below the min_samples {p.min_samples} "
                    f"of drift policy {p.name}"
                )
        self._detectors: dict[tuple[str, int], DriftDetector] = {}

    def on_completion(
        self, state: Mapping[str, Any] | None, completion: Mapping[str, Any], offset: int, now_us: int
    ) -> Fold:
        st = dict(state or {"reference": _empty(), "window": _empty(), "offset": -1, "windows": 0, "skipped": 0})
        trace = str(completion["trace_id"])
        recent = st.get("recent", [])
        if (
            offset <= st["offset"]
            or trace in st["reference"]["traces"]
            or trace in st["window"]["traces"]
            or trace in recent
        ):
            # the same input again (a replay), or the same completion forwarded again by a repartition: a restarted
            # worker replays its source topic from the last commit and forwards those completions a second time,
            # at new offsets of the repartition topic, possibly after their window was reported
            return Fold(st, duplicates=1)
        # an embedding of another size would stop the fold when its window is compared, maybe many completions
        # later: refused here (FoldError), before it joins
        check_embedding_joins(embedding_dim(state), completion)
        st["offset"] = offset
        if completion.get("error") or not completion.get("prompt_embedding"):
            st["skipped"] += 1  # failed requests and requests without an embedding are not traffic to compare
            st["recent"] = self._remember(recent, [trace])
            return Fold(st)
        at = int(completion["completed_at_us"])
        building = len(st["reference"]["emb"]) < self.windows.reference_size
        target = st["reference"] if building else st["window"]
        target = {
            **target,
            "emb": [*target["emb"], _pack(completion["prompt_embedding"])],
            "traces": [*target["traces"], trace],
        }
        ids = [int(t) for t in completion.get("output_token_ids") or []]
        target["token_lists"] = [*target.get("token_lists", []), ids]
        tokens = Counter({int(k): v for k, v in target["tokens"].items()})
        tokens.update(ids)
        target["tokens"] = {str(k): v for k, v in tokens.items()}
        target["start_us"] = at if not target["start_us"] else min(target["start_us"], at)
        target["end_us"] = max(target["end_us"], at)
        st["reference" if building else "window"] = target
        out = Fold(st)
        if not building and len(target["emb"]) >= self.windows.window_size:
            model = str(completion["model_version"])
            result = self._detector(model, st).compare(_window(target))
            if result is not None:
                out.reports.append(self.report(model, st, result, now_us))
                st["windows"] += 1
            st["recent"] = self._remember(recent, target["traces"])
            st["window"] = _empty()
        return out

    def _remember(self, recent: list[str], traces: list[str]) -> list[str]:
        """Trace ids that left the open windows, the last ``4 * window_size``: a replay reaching back further than
        that (input offsets are committed every second) would be counted again."""
        return [*recent, *traces][-4 * self.windows.window_size :]

    def policy(self, model_version: str) -> DriftPolicy:
        return drift_policy_for(self.policies, model_version)

    def _detector(self, model: str, st: Mapping[str, Any]) -> DriftDetector:
        key = (model, int(st["reference"]["end_us"]))
        det = self._detectors.get(key)
        if det is None:
            det = self._detectors[key] = DriftDetector(_window(st["reference"]), self.policy(model))
        return det

    @staticmethod
    def report(model: str, st: Mapping[str, Any], result: DriftResult, now_us: int) -> dict[str, Any]:
        ref, cur = st["reference"], st["window"]
        return {
            "model_version": model,
            "reference_start_us": ref["start_us"],
            "reference_end_us": ref["end_us"],
            "window_start_us": cur["start_us"],
            "window_end_us": cur["end_us"],
            "sample_count": result.sample_count,
            "statistics": [
                {"name": s.name, "value": s.value, "threshold": s.threshold, "p_value": s.p_value, "fired": s.fired}
                for s in result.statistics
            ],
            "fired": result.fired,
            "produced_at_us": now_us,
        }
