"""Profiling of each model version: the tumbling window of step aggregates and the tracker the profiling agents fold
steps, neuron counts and clock ticks with."""
