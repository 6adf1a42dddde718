"""The sink plugin API and the built-in sinks, registered by entry point under ``evostream.sinks``."""
