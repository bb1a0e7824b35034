"""Experiment trackers (`logger=mlflow`, `logger=wandb`, `logger=tensorboard`, several at once): offline
defaults, and what a run sends them besides Lightning's metrics and hyperparameters.

- Defaults (`logger_defaults`), for the values a logger node leaves null: MLflow writes to an SQLite
  store, `<run dir>/mlflow.db` with artifacts in `<run dir>/mlartifacts` (in a sweep, the sweep dir's,
  so one experiment holds every trial; MLflow 3 refuses its old file store); W&B runs offline unless the
  user logged in (`WANDB_API_KEY` or `wandb login`), to be sent later with `wandb sync`; both name the
  run after its dir.
- At the start (`log_config`): the resolved config, flattened (`optim.lr`), as hyperparameters of every
  logger, next to the model's hyperparameters that Lightning logs itself.
- At the end, rank 0 (`publish`): the HF `model/` folder and `provenance.json` as artifacts (MLflow,
  W&B), the resolved config as `config.yaml` (MLflow, W&B) or as text (TensorBoard); then the W&B run is
  finished, so the next trial of a sweep starts its own. A tracker that fails here only logs a warning:
  the run's own files are written already.
"""

from __future__ import annotations

import logging
import netrc
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

logger = logging.getLogger(__name__)


def _is(obj_or_cls: Any, name: str) -> bool:
    """Whether `obj_or_cls` is (an instance of) the Lightning logger class `name`, without importing the
    tracker's library when the run does not use it."""
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    return any(
        c.__name__ == name and c.__module__.startswith(("pytorch_lightning", "lightning"))
        for c in cls.__mro__
    )


def wandb_logged_in() -> bool:
    """Whether W&B has an API key: `WANDB_API_KEY`, or the netrc entry `wandb login` writes."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def logger_defaults(cls: type, node: dict[str, Any], out: Path, store: Path) -> dict[str, Any]:
    """`node` (a logger's arguments) with the offline defaults for the nulls; `out` is the run dir,
    `store` where a tracker's shared store goes (the sweep dir in a sweep, else the run dir)."""
    node = dict(node)
    if _is(cls, "MLFlowLogger"):
        if not node.get("tracking_uri"):
            node["tracking_uri"] = f"sqlite:///{(store / 'mlflow.db').resolve()}"
            if not node.get("artifact_location"):
                node["artifact_location"] = str((store / "mlartifacts").resolve())
            store.mkdir(parents=True, exist_ok=True)
        if not node.get("run_name"):
            node["run_name"] = out.name
    elif _is(cls, "WandbLogger"):
        if node.get("offline") is None:
            node["offline"] = not wandb_logged_in()
        if not node.get("name"):
            node["name"] = out.name
    return node


def flat(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config values as `a.b.c` keys; lists as their text."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat(value, f"{name}."))
        else:
            out[name] = value if isinstance(value, (int, float, str, bool)) or value is None else str(value)
    return out


def resolved(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)


def log_config(loggers: Sequence[Any], cfg: DictConfig | Mapping[str, Any]) -> None:
    """The resolved config, flattened, as hyperparameters of every logger (the CSV logger's hparams.yaml,
    MLflow's params, W&B's config, TensorBoard's hparams)."""
    values = flat(resolved(cfg))
    for lg in loggers:
        lg.log_hyperparams(values)


def publish(loggers: Sequence[Any], cfg: DictConfig | Mapping[str, Any], out: Path) -> None:
    """After the export: the model folder, provenance.json and the resolved config to each tracker."""
    text = OmegaConf.to_yaml(OmegaConf.create(resolved(cfg)))
    for lg in loggers:
        try:
            if _is(lg, "MLFlowLogger"):
                _mlflow(lg, text, out)
            elif _is(lg, "WandbLogger"):
                _wandb(lg, text, out)
            elif _is(lg, "TensorBoardLogger"):
                # TensorBoard's text tab reads markdown: indented, the YAML is a code block.
                lg.experiment.add_text("config", "    " + text.replace("\n", "\n    "), global_step=0)
                lg.experiment.flush()
        except Exception as e:  # noqa: BLE001  (a tracker's failure never undoes a finished run)
            logger.warning("%s: could not publish the run's model and config: %s", type(lg).__name__, e)


def _mlflow(lg: Any, text: str, out: Path) -> None:
    client, run = lg.experiment, lg.run_id
    client.log_text(run, text, "config.yaml")
    client.log_artifacts(run, str(out / "model"), "model")
    if (out / "provenance.json").is_file():
        client.log_artifact(run, str(out / "provenance.json"))
    logger.info("MLflow run %s (%s): model/, config.yaml, provenance.json logged.", run, lg._tracking_uri)


def _wandb(lg: Any, text: str, out: Path) -> None:
    import wandb

    run = lg.experiment
    model = wandb.Artifact(f"model-{run.id}", type="model", description=f"Hugging Face model/ of {out}")
    model.add_dir(str(out / "model"))
    run.log_artifact(model)
    config = wandb.Artifact(f"config-{run.id}", type="config")
    with config.new_file("config.yaml", encoding="utf-8") as f:
        f.write(text)
    if (out / "provenance.json").is_file():
        config.add_file(str(out / "provenance.json"))
    run.log_artifact(config)
    mode = "offline: `wandb sync " + str(Path(run.dir).parent) + "` sends it" if lg._offline else "online"
    logger.info("W&B run %s (%s): model and config artifacts logged.", run.id, mode)
    run.finish()
