"""What the Trainer runs: the LightningModule, the optimizer and its schedule, performance settings,
our callbacks, and the guards that stop a run on a non-finite value or a lost rank."""
