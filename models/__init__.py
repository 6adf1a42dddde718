"""Model assets every service may use: the task suite and the embedded default model with its training code."""
