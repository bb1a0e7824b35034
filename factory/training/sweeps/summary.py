"""A sweep's summary: `write_summary(sweep_dir)` reads every trial dir (`.hydra/overrides.yaml`,
`results.json`, `trial.json`) and writes `summary.csv`, `summary.md` (best first per the head's mode) and
`summary.png` (the objective against each swept value) into the sweep dir. `run_trial` rewrites it after
every trial; `SweepSummary` (a Hydra callback) writes the final one, and creates the sweep dir before the
sweep.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from factory.checkpoints.atomic import atomic_write, atomic_write_text

logger = logging.getLogger(__name__)

TRIAL_FILE = "trial.json"  # a trial's record, written by factory.training.sweeps.trials


def declared_keys(hydra_cfg: Any) -> list[str]:
    params = OmegaConf.select(hydra_cfg, "sweeper.params") if hydra_cfg is not None else None
    return [str(k) for k in params] if params else []


def _parse(value: str) -> Any:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def collect_trials(sweep_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """One row per trial dir in `sweep_dir` (a folder with `.hydra/overrides.yaml`), in trial order."""
    import yaml

    rows = []
    for trial in Path(sweep_dir).iterdir():
        overrides_file = trial / ".hydra" / "overrides.yaml"
        if not overrides_file.is_file():
            continue
        overrides = [str(o) for o in yaml.safe_load(overrides_file.read_text(encoding="utf-8")) or []]
        results, record = read_json(trial / "results.json"), read_json(trial / TRIAL_FILE)
        status = record.get("status") or ("ok" if results else "incomplete")  # incomplete: running or killed
        objective = results.get("best_value", record.get("objective"))
        rows.append(
            {
                "trial": int(trial.name) if trial.name.isdigit() else trial.name,
                "status": status,
                "objective": float(objective) if objective is not None else math.nan,
                "monitor": results.get("monitor", record.get("monitor")),
                "mode": results.get("mode", record.get("mode")),
                "values": {k.lstrip("+~"): _parse(v) for k, _, v in (o.partition("=") for o in overrides)},
                "num_parameters": results.get("num_parameters"),
                "wall_time_s": results.get("wall_time_s", record.get("wall_time_s")),
                "pruned_step": results.get("pruned_step", record.get("pruned_step")),
                "reason": record.get("reason", ""),
                "overrides": " ".join(overrides),
            }
        )
    return sorted(rows, key=lambda r: (isinstance(r["trial"], str), r["trial"]))


def swept_keys(rows: Sequence[Mapping[str, Any]], declared: Iterable[str] = ()) -> list[str]:
    """Keys whose value differs between trials; with one trial, the sweeper's declared keys it has."""
    keys = list(dict.fromkeys(k for r in rows for k in r["values"]))
    varying = [k for k in keys if len({repr(r["values"].get(k)) for r in rows}) > 1]
    if len(rows) > 1:
        return varying
    return [k for k in keys if k in set(declared)]


def rank_trials(rows: Sequence[Mapping[str, Any]], mode: str | None) -> list[Mapping[str, Any]]:
    """Finished trials best first (`mode` max or min), then the others in trial order."""
    ok = [r for r in rows if r["status"] == "ok" and math.isfinite(r["objective"])]
    rest = [r for r in rows if r not in ok]
    return sorted(ok, key=lambda r: r["objective"], reverse=mode == "max") + rest


def write_summary(
    sweep_dir: str | os.PathLike, declared: Iterable[str] = (), mode: str | None = None
) -> list[dict[str, Any]]:
    """Write summary.csv, summary.md and summary.png into `sweep_dir`; return the rows (trial order).

    `mode` (max or min) orders the table; by default the trials' own (the head's `mode`).
    """
    sweep_dir = Path(sweep_dir)
    rows = collect_trials(sweep_dir)
    if not rows:
        return rows
    keys = swept_keys(rows, declared)
    modes = [r["mode"] for r in rows if r["mode"]]
    mode = mode or (modes[0] if modes else "max")
    monitor = next((r["monitor"] for r in rows if r["monitor"]), "objective")
    ranked = rank_trials(rows, mode)
    atomic_write_text(sweep_dir / "summary.csv", _csv(rows, keys))
    atomic_write_text(sweep_dir / "summary.md", _markdown(ranked, keys, monitor, mode, sweep_dir))
    try:
        plot_summary(rows, keys, monitor, mode, sweep_dir / "summary.png")
    except ImportError as e:  # matplotlib draws it; the tables stand without the picture
        logger.warning("No summary.png: %s", e)
    return rows


COLUMNS = ("trial", "status", "objective", "monitor", "mode")
TAIL = ("num_parameters", "wall_time_s", "pruned_step", "reason", "overrides")


def _csv(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*COLUMNS, *keys, *TAIL])
    for r in rows:
        row = {**r, "objective": r["objective"] if math.isfinite(r["objective"]) else ""}
        writer.writerow(
            [*(row[c] for c in COLUMNS), *(r["values"].get(k, "") for k in keys), *(row[c] for c in TAIL)]
        )
    return out.getvalue()


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _markdown(
    ranked: Sequence[Mapping[str, Any]], keys: Sequence[str], monitor: str, mode: str, sweep_dir: Path
) -> str:
    counts = {s: sum(r["status"] == s for r in ranked) for s in dict.fromkeys(r["status"] for r in ranked)}
    mixed = {r["mode"] for r in ranked if r["mode"]} - {mode}
    lines = [
        f"# Sweep {sweep_dir.name}",
        "",
        f"{len(ranked)} trials ({', '.join(f'{n} {s}' for s, n in counts.items())}), best {monitor} "
        f"({mode}) first; pruned, failed and unfinished trials last (a pruned trial's value is its best "
        "before it was stopped)."
        + (f" Warning: some trials' heads use mode {sorted(mixed)}." if mixed else ""),
        "",
        "| rank | trial | "
        + " | ".join([monitor, *keys, "parameters", "wall time (s)", "status", "reason"])
        + " |",
        "|" + " --- |" * (len(keys) + 7),
    ]
    for i, r in enumerate(ranked, 1):
        ok = r["status"] == "ok" and math.isfinite(r["objective"])
        cells = [
            str(i) if ok else "",
            str(r["trial"]),
            _cell(r["objective"]),
            *(_cell(r["values"].get(k)) for k in keys),
            _cell(r["num_parameters"]),
            f"{r['wall_time_s']:.1f}" if r["wall_time_s"] is not None else "",
            r["status"] + (f" at step {r['pruned_step']}" if r.get("pruned_step") is not None else ""),
            _cell(r["reason"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_summary(
    rows: Sequence[Mapping[str, Any]], keys: Sequence[str], monitor: str, mode: str, path: Path
) -> None:
    """One panel per swept key: each finished trial's objective against its value; the best in red."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, and no GUI toolkit to import
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["status"] == "ok" and math.isfinite(r["objective"])]
    best = rank_trials(done, mode)[0] if done else None
    panels = list(keys) or ["trial"]
    ncols = min(len(panels), 4)
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3.5 * nrows), squeeze=False)
    try:
        for ax in axes.flat[len(panels) :]:
            ax.set_visible(False)
        for ax, key in zip(axes.flat, panels):
            values = [r["trial"] if key == "trial" else r["values"].get(key) for r in done]
            if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                xs = values
                if min(xs) > 0 and max(xs) >= 10 * min(xs):
                    ax.set_xscale("log")
            else:  # categories in order of first appearance
                names = list(dict.fromkeys(str(v) for v in values))
                xs = [names.index(str(v)) for v in values]
                ax.set_xticks(range(len(names)), names)
            ax.scatter(xs, [r["objective"] for r in done], color=["red" if r is best else "C0" for r in done])
            ax.set(xlabel=key, ylabel=monitor)
        failed = len(rows) - len(done)
        fig.suptitle(
            f"{monitor} ({mode}) by swept value" + (f"; {failed} trials without a value" if failed else "")
        )
        fig.tight_layout()
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)


# ---- the Hydra callback ---------------------------------------------------------------------------------
class SweepSummary(Callback):
    """Registered in `hydra.callbacks`; acts under `-m` only: creates the sweep dir before the sweeper opens
    it (the Optuna study's storage lives there), and writes the summary when the sweep ends."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        Path(config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        rows = write_summary(sweep_dir, declared_keys(config.hydra), OmegaConf.select(config, "head.mode"))
        logger.info("Sweep summary of %d trials: %s", len(rows), sweep_dir / "summary.md")
