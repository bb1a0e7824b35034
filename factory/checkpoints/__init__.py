"""Hugging Face checkpoint folders: hub resolution, reading and writing weights, atomic writes."""
