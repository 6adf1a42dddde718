"""Operators that build a new candidate from a model: structural pruning (heads, FFN neurons, layers)."""
