"""Training: a composed config resolved once into a plan, then one run of it.

The layout follows the concerns of a run:

- `command_line` (train.py's command line, parsed once; what the user set) and `hydra_internals` (all
  of Hydra's private API that factory uses, in one place);
- `plan` (the composed config resolved once into typed, checked values) and `pretrained`
  (init=pretrained: the checkpoint's config and weights);
- `run` (`train(cfg)`: a run as a sequence of named steps) and `resume` (resume=, last.ckpt, the run
  dir's lock, checkpoints never half-written);
- `lightning/`: what the Trainer runs: the LightningModule, the optimizer and schedule, performance
  settings, our callbacks, the guards against non-finite values and lost ranks;
- `distributed/`: the ranks of one run (Trainer strategy, the launcher that replays rank 0's run, the
  rank check) and the child rank's entry point;
- `sweeps/`: one trial, the sweep's summary, and the Optuna sweeper;
- `tracking/`: the experiment loggers, the plots, and the provenance record of a run.
"""
