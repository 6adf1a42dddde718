"""Risk of each generation: the policy (thresholds and baselines of a model family), the per-trace score, the
tracker the risk agents fold steps and completions with, and the calibrator that fits a policy from a reference run."""
