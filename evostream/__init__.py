"""evostream: watch, profile, evolve and govern language models on an Apache Kafka log."""

__version__ = "0.1.0"
