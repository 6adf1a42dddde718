"""The local Kafka stack: jars from Maven Central, a KRaft broker on loopback (one node, or a cluster of three),
the catalog's topics."""

from evostream.core.stack.broker import LocalStack, StackState, StackStatus
from evostream.core.stack.cluster import LocalCluster, resolve_bootstrap

__all__ = ["LocalCluster", "LocalStack", "StackState", "StackStatus", "resolve_bootstrap"]
