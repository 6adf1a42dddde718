"""Routing maths, plain objects with no I/O: which target answers a request (the self model or a stronger reference),
before generation from the prompt and during it from the token risk, under an independence level whose gates are
calibrated on labelled traffic; and the front door's parts (response cache, budgets, rate limits, prices).

The inference service, the API and the benchmarks call these objects; none of them reads Kafka or a file."""
