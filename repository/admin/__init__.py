"""Operators' tools: erasure, database privileges and statistics."""
