"""Train a model: `python train.py [group=option ...] [key=value ...]`; the groups are in conf/.

A thin shell over `factory.training.run.train`; returns the monitored metric, for Hydra's sweepers.
"""

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from factory.contract.errors import USER_ERRORS, ConfigError
from factory.training.command_line import parse
from factory.training.lightning.failures import PREEMPTED_EXIT_STATUS, Preempted
from factory.training.resume import refuse_if_held, resumed
from factory.training.run import train
from factory.training.sweeps.trials import run_trial


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    try:  # under -m, a trial that cannot work is recorded as failed and the sweep goes on
        return run_trial(cfg, train)
    except Preempted as e:  # SIGTERM: last.ckpt is written; the status says "killed by SIGTERM"
        print(f"Stopped: {e}", file=sys.stderr)
        sys.exit(PREEMPTED_EXIT_STATUS)
    except USER_ERRORS as e:  # config, data, checkpoint, diverged, the OS: the message says it all
        if isinstance(e, ConfigError):
            remove_empty_run_dir()
        print(f"Error: {e}", file=sys.stderr)
        sys.exit(1)


def remove_empty_run_dir() -> None:
    """A run stopped by a config error leaves no dir: Hydra created it (its `.hydra/` record, the log)
    before the config was checked. A dir holding anything else (a resumed run's) is kept."""
    import shutil

    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    if hc.mode is not None and hc.mode.name == "MULTIRUN":  # a sweep keeps each trial's record
        return
    run = Path(hc.runtime.output_dir)
    if run.is_dir() and {p.name for p in run.iterdir()} <= {".hydra", f"{hc.job.name}.log"}:
        logging.shutdown()  # the log file is open: close it first
        shutil.rmtree(run, ignore_errors=True)


if __name__ == "__main__":
    try:  # the command line, parsed once here; Hydra's record of it is read without a second parse
        cli = resumed(parse(sys.argv[1:]))  # resume=<run dir>: that run's own config and dir
        cli.check(
            Path(__file__).parent / "conf"
        )  # key typos, with the valid keys, before Hydra's terse error
        if cli.args.multirun and cli.overrides is not None:  # a range Optuna cannot sample: fail here
            from factory.training.sweeps.study import search_space

            search_space({}, cli.texts)
        run_dir = cli.value("hydra.run.dir")
        if run_dir is not None:  # before Hydra writes its record there: a dir a live run trains in is refused
            refuse_if_held(str(run_dir), "hydra.run.dir")
    except USER_ERRORS as e:
        print(f"Error: {e}", file=sys.stderr)
        sys.exit(1)
    sys.argv[1:] = cli.argv
    main()
