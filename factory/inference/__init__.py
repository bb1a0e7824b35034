"""Inference: the predictor over a model folder, generation, and the `infer.py` command line."""
