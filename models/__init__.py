"""Model assets every service may use: the task suite and the embedded default model with its training code."""

if __name__ != "evostream.models":  # one module object per file (tests/test_packaging.py)
    raise ImportError(f"import evostream.models, not {__name__}: the folder models/ is part of evostream")
