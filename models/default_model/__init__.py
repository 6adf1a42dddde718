"""The embedded default model: a small byte-level T5 that evostream trains itself on its task suite."""

from pathlib import Path

WEIGHTS_DIR = Path(__file__).parent / "weights"
MODEL_ID = "evostream/t5-tiny-suite"
