"""The sink plugin API and the built-in sinks, registered by entry point under ``evostream.sinks``."""

if __name__ != "evostream.plugins":  # one module object per file (tests/test_packaging.py)
    raise ImportError(f"import evostream.plugins, not {__name__}: the folder plugins/ is part of evostream")
