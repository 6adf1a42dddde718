"""Governed prompt templates, pure: the template record, its rendering, protected markers, the variants a
co-evolution cycle proposes and the gate that accepts one. No I/O: the wiring stores, registers and scores them."""
