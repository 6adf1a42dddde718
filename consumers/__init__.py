"""Evolution and governance consumers, and the sink fan-out runner."""

if __name__ != "evostream.consumers":  # one module object per file (tests/test_packaging.py)
    raise ImportError(f"import evostream.consumers, not {__name__}: the folder consumers/ is part of evostream")
