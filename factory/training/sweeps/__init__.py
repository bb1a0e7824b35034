"""Sweeps (`python train.py -m ...`): one trial (`trials`), the sweep's summary (`summary`), and the Optuna
sweeper (`study`)."""
