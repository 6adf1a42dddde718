"""Drift of each model version's traffic: the policy, the statistics between a reference and a current window, and
the tracker the drift agent folds completions with."""
