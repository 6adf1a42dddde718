"""The local single-node Kafka stack: jars from Maven Central, a KRaft broker on loopback, the catalog's topics."""

from evostream.core.stack.broker import LocalStack, StackState, StackStatus, resolve_bootstrap

__all__ = ["LocalStack", "StackState", "StackStatus", "resolve_bootstrap"]
