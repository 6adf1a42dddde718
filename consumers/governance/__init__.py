"""Governance: the event log of model versions, actors and decisions (events, keys, chain, projection, log)."""
