"""PNGs drawn with matplotlib (imported lazily): a run's training loss and validation metrics, and an
Optuna study's optimisation history and parameter importances."""

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


def plot_history(
    trials: Sequence[Mapping[str, object]], direction: str, path: str | os.PathLike, metric: str = "objective"
) -> None:
    """An Optuna study's optimisation history: each trial's value by trial number (finished trials as
    dots, pruned ones as crosses at their last reported value), and the best value so far as a line.

    `trials`: dicts with `number`, `state` (Optuna's state name) and `value` (None when there is none);
    `direction`: maximize or minimize; `metric`: the objective's name.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    better = max if direction == "maximize" else min
    fig, ax = plt.subplots(figsize=(7, 4))
    try:
        for state, marker, color in (("COMPLETE", "o", "C0"), ("PRUNED", "x", "C7")):
            points = [
                (t["number"], t["value"]) for t in trials if t["state"] == state and t["value"] is not None
            ]
            if points:
                ax.scatter(*zip(*points), marker=marker, color=color, label=state.lower(), zorder=3)
        done = sorted((t["number"], t["value"]) for t in trials if t["state"] == "COMPLETE")
        if done:
            best, steps = None, []
            for number, value in done:
                best = value if best is None else better(best, value)
                steps.append((number, best))
            ax.step(*zip(*steps), where="post", color="C3", label="best so far")
        failed = sum(t["state"] == "FAIL" for t in trials)
        ax.set(
            xlabel="trial",
            ylabel=metric,
            title=f"Optimisation history ({direction})" + (f"; {failed} failed" if failed else ""),
        )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # trial numbers
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best")
        fig.tight_layout()
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)


def plot_importances(importances: Mapping[str, float], path: str | os.PathLike) -> None:
    """Each swept parameter's importance for the objective as a horizontal bar, the largest on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(importances, key=lambda k: importances[k])
    fig, ax = plt.subplots(figsize=(7, 1 + 0.5 * len(names)))
    try:
        ax.barh(names, [importances[k] for k in names], color="C0")
        for y, name in enumerate(names):
            ax.text(importances[name], y, f" {importances[name]:.2f}", va="center")
        ax.set(xlabel="importance (Optuna's default evaluator; sums to 1)", title="Parameter importances")
        fig.tight_layout()
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)
