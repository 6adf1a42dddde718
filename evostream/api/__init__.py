"""The HTTP API and the live dashboard (``evostream api``): a presentation of the views, like the CLI."""
