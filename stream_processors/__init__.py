"""The Faust app and its agents; the streaming maths live beside them as plain objects."""

if __name__ != "evostream.stream_processors":  # one module object per file (tests/test_packaging.py)
    raise ImportError(
        f"import evostream.stream_processors, not {__name__}: the folder stream_processors/ is part of evostream"
    )
