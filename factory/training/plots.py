"""A PNG of a run's training loss and validation metrics, drawn with matplotlib (imported lazily)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from factory.checkpoints.atomic import atomic_write


def plot_curves(
    train: Sequence[tuple[int, float]],
    validation: Sequence[tuple[int, Mapping[str, float]]],
    path: str | os.PathLike,
    title: str = "",
) -> None:
    """Training loss by step on the left, each validation metric by step on the right, saved to `path`."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, and no GUI toolkit to import
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    try:
        if train:
            steps, losses = zip(*train)
            left.plot(steps, losses, label="train/loss", linewidth=1)
        loss_steps = [(s, m["val/loss"]) for s, m in validation if "val/loss" in m]
        if loss_steps:
            left.plot(*zip(*loss_steps), marker="o", label="val/loss")
        left.set(xlabel="step", ylabel="loss", title="loss")
        left.legend(loc="best")
        names = sorted({k for _, m in validation for k in m} - {"val/loss"})
        for name in names:
            points = [(s, m[name]) for s, m in validation if name in m]
            right.plot(*zip(*points), marker="o", label=name)
        right.set(xlabel="step", title="validation")
        if names:
            right.legend(loc="best")
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)
