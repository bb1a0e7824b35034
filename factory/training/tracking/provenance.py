"""What a run records about itself, so it can be understood and repeated: `<run dir>/provenance.json`.

The record holds the resolved config, the overrides and preset choices Hydra applied, the command line,
the seed, the versions of the packages that decide the numbers, the git commit of the code (and whether
the checkout had uncommitted changes), the hardware, and the command that replays the run:

    python train.py --config-dir <run dir>/.hydra --config-name config hydra.run.dir=<new dir>

Hydra saves the composed config as `.hydra/config.yaml` with no defaults list (the presets are already
merged into it), so the replay composes exactly the same config. A run started from Python (`train(cfg,
run_dir=...)`, no Hydra) gets that file written here, so it replays and resumes the same way. On CPU a
replay gives bit-identical weights; on GPU set `trainer.deterministic=true` for that.

A resumed run (`resume=<run dir>`) keeps the record and appends what changed to `resumes`.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import logging
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from factory.checkpoints.atomic import atomic_write_text
from factory.config import plain_data

logger = logging.getLogger(__name__)

PROVENANCE_FILE = "provenance.json"
RUN_CONFIG = Path(".hydra") / "config.yaml"
# Distribution names: what decides the numbers a run produces, and the code itself.
PACKAGES = (
    "torch",
    "pytorch-lightning",
    "hydra-core",
    "omegaconf",
    "tokenizers",
    "safetensors",
    "huggingface_hub",
    "numpy",
    "factory",
)
# Environment variables that change results or what a run sees.
ENVIRONMENT = (
    "CUBLAS_WORKSPACE_CONFIG",
    "CUDA_VISIBLE_DEVICES",
    "OMP_NUM_THREADS",
    "PYTHONHASHSEED",
    "HF_HUB_OFFLINE",
)
_CODE_DIR = Path(__file__).resolve().parents[2]  # factory/


def write_provenance(
    cfg: DictConfig,
    run_dir: str | os.PathLike,
    *,
    seed: int,
    argv: Sequence[str] | None = None,
    typed: Sequence[str] = (),
) -> Path:
    """Write (or, for a resumed run, extend) `<run dir>/provenance.json`; return its path.

    `typed` are the dotted keys the user set (`arch.num_hidden_layers`, ...): the replay command sets
    them again, so a replay counts them as set too (with init=pretrained only those apply). Call it on
    rank 0 only. Outside Hydra, `.hydra/config.yaml` is written too when missing.
    """
    run = Path(run_dir).resolve()
    run.mkdir(parents=True, exist_ok=True)
    path = run / PROVENANCE_FILE
    if not _hydra_running() and not (run / RUN_CONFIG).is_file():
        (run / RUN_CONFIG).parent.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(_without_hydra(cfg), run / RUN_CONFIG)
    record = collect(cfg, run, seed=seed, argv=argv, typed=typed)
    if cfg.get("resume") and path.is_file():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            logger.warning("Could not read %s (%s): writing a new record.", path, e)
        else:
            keep = ("started", "command", "overrides", "git", "versions", "hardware", "environment")
            previous.setdefault("resumes", []).append({k: record[k] for k in keep})
            record = previous
    atomic_write_text(path, json.dumps(record, indent=2, default=str) + "\n")
    return path


def collect(
    cfg: DictConfig,
    run_dir: str | os.PathLike,
    *,
    seed: int,
    argv: Sequence[str] | None = None,
    typed: Sequence[str] = (),
) -> dict[str, Any]:
    """The provenance record of a run (see the module docstring)."""
    run = Path(run_dir).resolve()
    return {
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "run_dir": str(run),
        "seed": seed,
        "command": {
            "argv": list(sys.argv if argv is None else argv),
            "cwd": os.getcwd(),
            "python": sys.executable,
        },
        "replay": replay_command(run, overrides=[typed_override(cfg, key) for key in typed]),
        "typed": list(typed),
        "overrides": hydra_overrides(),
        # Unresolved where a resolver needs a running Hydra and there is none.
        "config": plain_data(_without_hydra(cfg), fallback_unresolved=True),
        "versions": package_versions(),
        "git": git_state(_CODE_DIR),
        "hardware": hardware(),
        "environment": {k: os.environ[k] for k in ENVIRONMENT if k in os.environ},
    }


def replay_command(
    run_dir: str | os.PathLike, new_dir: str | os.PathLike | None = None, overrides: Sequence[str] = ()
) -> str:
    """The shell command that trains the run again from its saved config, into `new_dir`.

    `overrides` set again the values the user typed: they are in the saved config already, and setting
    them on the command line again records them as typed (see `factory.training.command_line`).
    """
    config = Path(run_dir).resolve() / RUN_CONFIG
    target = "<new run dir>" if new_dir is None else shlex.quote(str(new_dir))
    typed = "".join(f" {shlex.quote(o)}" for o in overrides)
    return (
        f"python {shlex.quote(_train_script())} --config-dir {shlex.quote(str(config.parent))} "
        f"--config-name config hydra.run.dir={target}{typed}"
    )


def typed_override(cfg: DictConfig, key: str) -> str:
    """`key=value` in Hydra's override syntax for the value `key` has in `cfg`."""
    value = OmegaConf.select(cfg, key, throw_on_missing=False)
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    return f"{key}={_override_value(value)}"


def _override_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, list):
        return "[" + ",".join(_override_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_override_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _train_script() -> str:
    """The script this run was started with when it is a `train.py`, else plain `train.py` (the library
    never assumes where the entry point lives)."""
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if argv0 is not None and argv0.name == "train.py" and argv0.is_file():
        return str(argv0.resolve())
    return "train.py"


def hydra_overrides() -> dict[str, Any] | None:
    """The command-line overrides and the chosen preset of each group; None outside Hydra."""
    if not _hydra_running():
        return None
    from hydra.core.hydra_config import HydraConfig

    hydra = HydraConfig.get()
    return {
        "task": list(hydra.overrides.task),
        "hydra": list(hydra.overrides.hydra),
        "choices": {k: v for k, v in hydra.runtime.choices.items() if not k.startswith("hydra/")},
    }


def package_versions() -> dict[str, str | None]:
    """Installed versions of `PACKAGES` (None when absent), Python's, and torch's CUDA and cuDNN."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    versions["cuda"] = torch.version.cuda
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    versions["cudnn"] = str(cudnn) if cudnn else None
    return versions


def git_state(path: str | os.PathLike) -> dict[str, Any] | None:
    """Commit, dirty flag and changed files of the git checkout holding `path`; None when there is none
    (an installed package, no git, or git refusing the folder)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(path), *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout

    try:
        top = git("rev-parse", "--show-toplevel").strip()
        commit = git("rev-parse", "HEAD").strip()
        status = git("status", "--porcelain", "--untracked-files=normal").splitlines()
    except (OSError, subprocess.SubprocessError):
        return None
    return {
        "repository": top,
        "commit": commit,
        "dirty": bool(status),
        "changed": [line[3:] for line in status[:50]],
    }


def hardware() -> dict[str, Any]:
    """CPU model and counts, memory, GPUs (name, memory, compute capability), torch's CPU threads."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "host": platform.node(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if hasattr(os, "sched_getaffinity"):
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    try:
        info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (AttributeError, ValueError, OSError):
        pass
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            gpus.append(
                {
                    "name": props.name,
                    "memory_gb": round(props.total_memory / 2**30, 1),
                    "capability": f"{props.major}.{props.minor}",
                }
            )
    info["gpus"] = gpus
    mps = getattr(torch.backends, "mps", None)
    info["mps"] = bool(mps is not None and mps.is_available())
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _without_hydra(cfg: DictConfig) -> DictConfig:
    return OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]) if "hydra" in cfg else cfg


def _hydra_running() -> bool:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.initialized()
