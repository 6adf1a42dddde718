"""Progressive delivery's pure maths: the rollout plan, the per-step statistical gates and the deterministic traffic
split. No I/O: the inference service, the rollout controller, governance and the benchmarks call it."""
