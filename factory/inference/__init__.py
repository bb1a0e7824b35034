"""Inference: the predictor over a model folder and the `infer.py` command line (generation itself is
`factory.generation`)."""
