"""Thin, typed edges over confluent-kafka: readiness and topics, a delivery-checked producer, a decoding consumer."""
