"""Encoders (placeholder until the encoders issue)."""
