"""Operators: each builds a new candidate model from a served one and leaves its input unchanged."""
