"""``python -m evostream.cli``: the same app as the ``evostream`` console script."""

from evostream.cli import app

app()
