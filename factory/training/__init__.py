"""Training: the plan resolved once from a composed config, the Lightning module, the run, and what
keeps a run safe and reproducible (resume, distributed ranks, provenance, sweeps)."""
