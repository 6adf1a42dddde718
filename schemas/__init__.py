"""The contract: Avro schemas of every event, their codec, and the topic catalog."""

if __name__ != "evostream.schemas":  # one module object per file (tests/test_packaging.py)
    raise ImportError(f"import evostream.schemas, not {__name__}: the folder schemas/ is part of evostream")

from evostream.schemas.catalog import CATALOG, TopicSpec, topic_spec
from evostream.schemas.codec import MAGIC, RecordCodec
from evostream.schemas.fingerprints import SchemaIndex, SchemaVersion, default_index

__all__ = [
    "CATALOG",
    "MAGIC",
    "RecordCodec",
    "SchemaIndex",
    "SchemaVersion",
    "TopicSpec",
    "default_index",
    "topic_spec",
]
