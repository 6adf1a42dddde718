"""The inference producer: model loading, instrumented generation, step emission, the request client."""

if __name__ != "evostream.producers":  # one module object per file (tests/test_packaging.py)
    raise ImportError(f"import evostream.producers, not {__name__}: the folder producers/ is part of evostream")
