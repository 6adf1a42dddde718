"""RouteLLM's own Bradley-Terry fit against ``evostream.routing.peer.SWRanking``'s closed form, on bench.routing's
traced workload: the largest difference in the reference's win rate and the rank correlation.

RouteLLM's released SW ranking router cannot run offline (its battles and embeddings come from the Hugging Face hub
and OpenAI's embedding API), so only its fit, ``compute_elo_mle_with_tie`` in
``routellm/routers/similarity_weighted/utils.py``, runs here, with its released weights ``10 * 10 ** (sim /
max_sim)``. It needs ``routellm`` (its wheel, without dependencies), ``pandas`` and ``scikit-learn`` importable; they
are not evostream's dependencies. The utils module builds an OpenAI client when imported: a placeholder key is set,
and no request is made.

Run: python -m bench.routing --workload-cache W.pkl, then
     PYTHONPATH=<routellm wheel>:<pandas> python -m bench.routellm_agreement W.pkl [--prompts 200]
"""

from __future__ import annotations

import argparse
import os
import pickle
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workload", type=Path, help="bench.routing's --workload-cache file")
    ap.add_argument("--prompts", type=int, default=200, help="prompts whose win rate both compute")
    args = ap.parse_args(argv)
    os.environ.setdefault("OPENAI_API_KEY", "unused-offline")
    try:
        import pandas as pd
        from routellm.routers.similarity_weighted.utils import compute_elo_mle_with_tie
    except ImportError as e:
        raise SystemExit(f"needs routellm, pandas and scikit-learn importable: {e}") from e
    import __main__
    import bench.routing as br
    from evostream.routing.peer import SWRanking

    # bench.routing runs as __main__ when it writes the cache: its classes are found there
    __main__.Workload, __main__.Traces = br.Workload, br.Traces  # type: ignore[attr-defined]
    _, w = pickle.loads(args.workload.read_bytes())
    order = np.random.default_rng(0).permutation(len(w.examples))
    train, queries = order[: len(order) // 2], order[len(order) // 2 :][: args.prompts]
    s, r = w.self_.wrong[train], w.reference.wrong[train]
    winner = np.where(s & ~r, "model_a", np.where(r & ~s, "model_b", "tie"))
    battles = pd.DataFrame({"model_a": "reference", "model_b": "self", "winner": winner})
    ours = SWRanking.fit(w.embeddings[train], s, r).win_rate(w.embeddings[queries])
    unit = w.embeddings[train] / np.linalg.norm(w.embeddings[train], axis=1, keepdims=True)
    theirs = []
    t0 = time.perf_counter()
    for q in queries:
        sims = unit @ (w.embeddings[q] / np.linalg.norm(w.embeddings[q]))
        elo = compute_elo_mle_with_tie(battles, sample_weight=10 * 10 ** (sims / np.max(sims)))
        theirs.append(1 - 1 / (1 + 10 ** ((elo["reference"] - elo["self"]) / 400)))
    per = (time.perf_counter() - t0) / len(queries)
    rho = pd.Series(ours).corr(pd.Series(theirs), method="spearman")
    print(
        f"{len(queries)} prompts, {len(train)} battles: max |peer.py - routellm| = "
        f"{np.abs(ours - np.array(theirs)).max():.2e}; rank correlation {rho:.6f}; routellm {per * 1e3:.1f} ms/prompt"
    )


if __name__ == "__main__":
    main()
