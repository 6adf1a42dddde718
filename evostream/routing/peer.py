"""Peers of the routing policy, for measuring it against: RouteLLM's similarity-weighted (SW) ranking router, and a
random router.

SW ranking (Ong et al., "RouteLLM: Learning to Route LLMs with Preference Data", 2024), reimplemented from the paper
and the description of its released router: every training prompt is a battle between the strong model (our
reference) and the weak one (our self model), won by whichever answered right when the other did not, else a tie.
For a new prompt each battle is weighted by the similarity of its prompt, ``gamma * gamma ** (sim / max_sim)`` with
``sim`` the cosine of the prompt embeddings and ``max_sim`` the highest over the battles (``gamma`` = 10 as released),
and the Bradley-Terry model fitted on the weighted battles, a tie counted as one win for each side, gives the strong
model's win rate; the request goes to the strong model when that rate is above a threshold. With two models the
Bradley-Terry maximum-likelihood win rate has a closed form, the weighted wins plus half the weighted ties over the
weighted battles, which is what ``win_rate`` computes (RouteLLM fits it with scikit-learn; ``bench.routing``'s section
in docs/benchmarks.md says how the two were compared). RouteLLM's own routers need battles and embeddings from the
Hugging Face hub and OpenAI, which this project does not download; the embeddings here are the service's own (MiniLM).

Both decide before generation only; their threshold is set on a calibration split for a self-share, as the
policy's gates are (``threshold_for_share``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from evostream.routing.policy import RoutingError

F64 = npt.NDArray[np.float64]
GAMMA = 10.0


def _unit(x: F64) -> F64:
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


@dataclass(frozen=True)
class SWRanking:
    """Similarity-weighted win rate of the reference over the self model, from labelled training prompts."""

    embeddings: F64
    """The training prompts' embeddings, one row each (normalized here)."""
    outcome: F64
    """Per training prompt: 1 the reference won (it was right, the self model wrong), 0 it lost, 0.5 a tie."""
    gamma: float = GAMMA

    @classmethod
    def fit(
        cls, embeddings: F64, self_wrong: npt.ArrayLike, reference_wrong: npt.ArrayLike, gamma: float = GAMMA
    ) -> SWRanking:
        s = np.asarray(self_wrong, dtype=bool)
        r = np.asarray(reference_wrong, dtype=bool)
        if len(s) != len(r) or len(s) != len(np.atleast_2d(embeddings)) or not len(s):
            raise RoutingError("SW ranking needs one embedding and two labels per training prompt")
        outcome = np.where(s & ~r, 1.0, np.where(r & ~s, 0.0, 0.5))
        return cls(_unit(embeddings), outcome, gamma)

    def win_rate(self, embeddings: F64, chunk: int = 512) -> F64:
        """P(the reference beats the self model) for each row of ``embeddings``."""
        q = _unit(embeddings)
        out = np.empty(len(q))
        for start in range(0, len(q), chunk):
            sim = q[start : start + chunk] @ self.embeddings.T
            top = sim.max(axis=1, keepdims=True)
            w = self.gamma * self.gamma ** (sim / np.where(top > 0, top, 1.0))
            out[start : start + chunk] = (w @ self.outcome) / w.sum(axis=1)
        return out


def threshold_for_share(scores: F64, self_share: float) -> float:
    """The threshold at which ``self_share`` of ``scores`` stay on the self model (score <= threshold)."""
    s = np.sort(np.asarray(scores, dtype=np.float64))
    if not len(s):
        raise RoutingError("a threshold is set on scores; none given")
    keep = round(self_share * len(s))
    return -np.inf if keep <= 0 else float(s[min(keep, len(s)) - 1])


def random_scores(n: int, seed: int) -> F64:
    """A random router's scores: with ``threshold_for_share`` it sends a random share to the reference."""
    return np.random.default_rng(seed).random(n)
