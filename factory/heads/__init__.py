"""Heads: one task per file."""
