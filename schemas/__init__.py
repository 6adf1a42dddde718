"""The contract: Avro schemas of every event, their codec, and the topic catalog."""

from schemas.catalog import CATALOG, TopicSpec, topic_spec
from schemas.codec import MAGIC, RecordCodec
from schemas.registry import SchemaRegistry, SchemaVersion, default_registry

__all__ = [
    "CATALOG",
    "MAGIC",
    "RecordCodec",
    "SchemaRegistry",
    "SchemaVersion",
    "TopicSpec",
    "default_registry",
    "topic_spec",
]
