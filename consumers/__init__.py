"""Evolution and governance consumers, and the sink fan-out runner."""
