"""Optuna studies for `python train.py -m hparams_search=optuna`: our Hydra sweeper over Optuna's ask/tell
interface, and the trial's side of it (reporting each validation, pruning).

The sweeper (`OptunaSweeper`; Hydra finds it as `hydra_plugins.factory_sweeper.optuna.OptunaSweeper`)
asks the study for a trial, launches it as a Hydra job with the trial's values as overrides, in the trial
dir `<sweep dir>/<trial number>`, and tells the study how it ended: its value (COMPLETE), `TrialPruned`
(PRUNED) or `TrialFailed` (FAIL, e.g. heads not dividing the width). Any other error stops the sweep.

- Search space: `hydra.sweeper.params` and the command line, in Hydra's sweep syntax (`choice(1, 2)`,
  `range(1, 5)`, `interval(0.0, 0.1)`, `tag(log, interval(1e-5, 1e-2))`); a plain value is fixed.
- Storage: a journal file (`<sweep dir>/optuna.journal` by default; a path) or an RDB URL
  (`sqlite:///...`, `postgresql://...`). The study is created or loaded by name, so the same command on
  the same sweep dir resumes it, and several processes on one storage share it: the storage numbers the
  trials, so no two processes run the same trial, and each trial has its own dir.
- Seeds: trial `n` is sampled by a TPE sampler seeded `seed + n`, so a sweep repeats exactly, a resumed
  one or a second worker does not replay the first trials' values, and neither depends on which worker
  asked first.
- Pruning: the trial's job gets `hydra.sweeper.trial=<number>`; `trial_pruning` gives the run a callback
  that reports the monitored metric after each validation and stops the run when the pruner says so. Under
  DDP rank 0 reports and decides, and every rank stops at the same step.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf

from factory.config import ConfigError, did_you_mean
from factory.training.sweeps.trials import TrialFailed, TrialPruned

logger = logging.getLogger(__name__)

PRUNERS = ("median", "percentile", "successive_halving", "hyperband", "none")
DIRECTIONS = ("maximize", "minimize")
TARGET = "hydra_plugins.factory_sweeper.optuna.OptunaSweeper"


# ---- storage, sampler, pruner ---------------------------------------------------------------------------
def open_storage(storage: str) -> Any:
    """An RDB URL (`sqlite:///...`) as it is; anything else is the path of a journal file."""
    if "://" in str(storage):
        return str(storage)
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = Path(storage)
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def make_sampler(settings: Mapping[str, Any] | None, number: int) -> Any:
    """The TPE sampler of trial `number`: seeded `seed + number` (unseeded when `seed` is null)."""
    from optuna.samplers import TPESampler

    settings = dict(settings or {})
    seed = settings.pop("seed", None)
    try:
        return TPESampler(seed=None if seed is None else int(seed) + number, **settings)
    except TypeError as e:
        raise ConfigError(f"hydra.sweeper.sampler: {e} (the settings are TPESampler's).") from None


def make_pruner(name: str, settings: Mapping[str, Any] | None = None) -> Any:
    """Optuna's pruner `name` (one of `PRUNERS`) with its settings (`hydra.sweeper.pruners.<name>`)."""
    import optuna

    if name not in PRUNERS:
        raise ConfigError(
            f"hydra.sweeper.pruner={name!r} is not valid: expected one of {list(PRUNERS)}."
            + did_you_mean(str(name), PRUNERS)
        )
    kwargs = dict((settings or {}).get(name) or {})
    cls = {
        "median": optuna.pruners.MedianPruner,
        "percentile": optuna.pruners.PercentilePruner,
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
        "hyperband": optuna.pruners.HyperbandPruner,
        "none": optuna.pruners.NopPruner,
    }[name]
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"hydra.sweeper.pruners.{name}: {e}") from None


# ---- the search space -----------------------------------------------------------------------------------
def distribution(override: Any) -> Any:
    """Optuna's distribution for a Hydra sweep override, or the value as a string for a plain one.

    Raises:
        ConfigError: a sweep Optuna cannot sample (a range whose low end is above its high end, a log
            range that reaches 0), naming the key as typed, before any trial runs.
    """
    try:
        return _distribution(override)
    except ValueError as e:  # Optuna's checks of low, high, step and log
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(
            f"{override.input_line}: {e} Give the low end first (interval(low, high)), and a log range "
            "above 0.",
            key=override.get_key_element(),
        ) from None


def _distribution(override: Any) -> Any:
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep, Transformer
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    value = override.value()
    key = override.get_key_element()
    if isinstance(value, ChoiceSweep) or (isinstance(value, RangeSweep) and value.shuffle):
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if isinstance(value, RangeSweep):
        if any(isinstance(v, float) for v in (value.start, value.stop, value.step)):
            return FloatDistribution(value.start, value.stop, step=value.step)
        # range() excludes its stop, as Python's; IntDistribution includes its high end.
        return IntDistribution(int(value.start), int(value.stop) - 1, step=int(value.step))
    if isinstance(value, IntervalSweep):
        log = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log)
        return FloatDistribution(value.start, value.end, log=log)
    raise ConfigError(f"{key}={override.input_line}: this sweep is not supported by the Optuna sweeper.")


def search_space(
    params: Mapping[str, Any] | None, arguments: Sequence[str]
) -> tuple[dict[str, Any], list[str]]:
    """The distributions to sample (`hydra.sweeper.params`, then the command line, which wins) and the
    fixed overrides (plain values on the command line)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from optuna.distributions import BaseDistribution

    parser = OverridesParser.create()
    lines = [f"{k}={v}" for k, v in (params or {}).items()] + list(arguments)
    space: dict[str, Any] = {}
    fixed: dict[str, str] = {}
    for override in parser.parse_overrides(lines):
        key = override.get_key_element()  # with its +/++ prefix
        space.pop(key, None)
        fixed.pop(key, None)
        value = distribution(override)
        if isinstance(value, BaseDistribution):
            space[key] = value
        else:
            fixed[key] = value
    return space, [f"{k}={v}" for k, v in fixed.items()]


def suggest(trial: Any, space: Mapping[str, Any]) -> dict[str, Any]:
    """Each parameter of `space` suggested for `trial`, through the trial's public suggest methods."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    values = {}
    for name, d in space.items():
        if isinstance(d, CategoricalDistribution):
            values[name] = trial.suggest_categorical(name, d.choices)
        elif isinstance(d, FloatDistribution):
            values[name] = trial.suggest_float(name, d.low, d.high, step=d.step, log=d.log)
        else:
            values[name] = trial.suggest_int(name, d.low, d.high, step=d.step, log=d.log)
    return values


# ---- the sweeper ----------------------------------------------------------------------------------------
class OptunaSweeper(Sweeper):
    """A Hydra sweeper over Optuna's ask/tell interface; the settings are `hydra.sweeper.*`
    (conf/hydra/sweeper/optuna.yaml)."""

    def __init__(
        self,
        direction: str = "maximize",
        storage: str | None = None,
        study_name: str = "train",
        n_trials: int = 10,
        n_jobs: int = 1,
        sampler: Mapping[str, Any] | None = None,
        pruner: str = "median",
        pruners: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        trial: int | None = None,  # set in a trial's own config (see module doc); unused here
    ) -> None:
        if direction not in DIRECTIONS:
            raise ConfigError(
                f"hydra.sweeper.direction={direction!r} is not valid: expected one of {list(DIRECTIONS)}."
            )
        for key, value in (("n_trials", n_trials), ("n_jobs", n_jobs)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"hydra.sweeper.{key}={value!r} is not valid: expected a positive integer.")
        make_pruner(pruner, pruners)  # a bad name or setting fails before any trial
        self.direction, self.storage, self.study_name = direction, storage, study_name
        self.n_trials, self.n_jobs = n_trials, n_jobs
        self.sampler = OmegaConf.to_container(sampler) if isinstance(sampler, DictConfig) else sampler
        self.pruner, self.pruners = pruner, pruners
        self.params = params
        self.config: DictConfig | None = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def open_study(self) -> Any:
        import optuna

        assert self.config is not None
        storage = self.storage or str(Path(self.config.hydra.sweep.dir) / "optuna.journal")
        study = optuna.create_study(
            study_name=self.study_name,
            storage=open_storage(storage),
            sampler=make_sampler(self.sampler, 0),
            pruner=make_pruner(self.pruner, self.pruners),
            direction=self.direction,
            load_if_exists=True,
        )
        if study.direction.name.lower() != self.direction:
            raise ConfigError(
                f"hydra.sweeper.direction={self.direction}: study {self.study_name!r} in {storage} was "
                f"created to {study.direction.name.lower()}; use another study_name or sweep dir."
            )
        return study

    def ask(self, study: Any, space: Mapping[str, Any]) -> Any:
        """A new trial of `study` with values for every parameter of `space`, sampled with its own seed."""
        trial = study.ask()
        study.sampler = make_sampler(self.sampler, trial.number)  # sampling is lazy: this one samples
        suggest(trial, space)
        return trial

    def sweep(self, arguments: list[str]) -> None:
        import optuna

        assert self.config is not None and self.launcher is not None
        space, fixed = search_space(self.params, arguments)
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # we log each trial ourselves
        study = self.open_study()
        sweep_dir = Path(self.config.hydra.sweep.dir)
        logger.info(
            "Optuna study %r (%s, %d trials there): %d trials, searching %s; fixed %s.",
            self.study_name, self.direction, len(study.trials), self.n_trials, sorted(space), fixed,
        )  # fmt: skip
        launched = 0
        while launched < self.n_trials:
            trials = [self.ask(study, space) for _ in range(min(self.n_jobs, self.n_trials - launched))]
            batch = [
                (
                    *(f"{k}={_override_value(v)}" for k, v in t.params.items()),
                    *fixed,
                    f"hydra.sweep.subdir={t.number}",  # the study numbers trials across workers
                    f"++hydra.sweeper.trial={t.number}",  # tells the run which trial it reports to
                )
                for t in trials
            ]
            told: set[int] = set()
            try:
                if launched == 0:
                    self.validate_batch_is_legal(batch)
                returns = self.launcher.launch(batch, initial_job_idx=launched)
                launched += len(trials)
                errors = []
                for trial, ret in zip(trials, returns):
                    told.add(trial.number)
                    try:
                        self.tell(study, trial, ret)
                    except Exception as e:  # noqa: BLE001  (the batch's other results are told first)
                        errors.append(e)
                if errors:
                    raise errors[0]
            finally:  # an error stops the sweep: no trial of this batch stays "running" in the study
                for trial in trials:
                    if trial.number not in told:
                        study.tell(trial, state=optuna.trial.TrialState.FAIL)
                write_study_plots(
                    study, sweep_dir, OmegaConf.select(self.config, "head.monitor") or "objective"
                )
        best = [t for t in study.trials if t.state.name == "COMPLETE"]
        if best:
            logger.info(
                "Best trial: %d, value %s, %s", study.best_trial.number, study.best_value, study.best_params
            )

    def tell(self, study: Any, trial: Any, ret: Any) -> None:
        """Tell `study` how the job `ret` of `trial` ended; an unexpected error is raised after."""
        from hydra.core.utils import JobStatus
        from optuna.trial import TrialState

        # The job's exception, read from the field: `ret.return_value` would log a pruned trial as an
        # "Error executing job" before raising it.
        error = ret._return_value if ret.status == JobStatus.FAILED else None
        if isinstance(error, TrialPruned):
            study.tell(trial, state=TrialState.PRUNED)
            logger.info("Trial %d pruned at step %s.", trial.number, error.step)
            return
        if isinstance(error, TrialFailed):
            study.tell(trial, state=TrialState.FAIL)
            logger.info("Trial %d failed: %s", trial.number, error)
            return
        if error is not None:
            study.tell(trial, state=TrialState.FAIL)
            ret.return_value  # noqa: B018  (Hydra's own report of the error, then raises it)
        value = float(ret.return_value)
        if not math.isfinite(value):
            study.tell(trial, state=TrialState.FAIL)
            return
        study.tell(trial, value)
        logger.info("Trial %d: %s with %s", trial.number, value, trial.params)


def _override_value(value: Any) -> str:
    """A sampled value as Hydra reads it back: a string with characters Hydra parses is quoted."""
    if isinstance(value, str) and not all(c.isalnum() or c in "_-./" for c in value):
        return repr(value)
    return str(value)


# ---- the trial's side -----------------------------------------------------------------------------------
def current_trial() -> tuple[DictConfig, int] | None:
    """This job's sweeper settings and Optuna trial number, when it is a trial of `OptunaSweeper`."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    sweeper = HydraConfig.get().get("sweeper")
    if sweeper is None or sweeper.get("_target_") != TARGET or sweeper.get("trial") is None:
        return None
    return sweeper, int(sweeper.trial)


class Pruning(pl.Callback):
    """Reports `monitor` after each validation to trial `number` of the study; when the pruner says so,
    every rank stops training at that step (`pruned_step`). Rank 0 alone reads and writes the study."""

    def __init__(self, sweeper: DictConfig, number: int, monitor: str) -> None:
        self.sweeper, self.number, self.monitor = sweeper, number, monitor
        self.pruned_step: int | None = None
        self._trial: Any = None

    def trial(self) -> Any:
        if self._trial is None:
            import optuna

            optuna.logging.set_verbosity(optuna.logging.WARNING)
            study = optuna.load_study(
                study_name=str(self.sweeper.study_name),
                storage=open_storage(str(self.sweeper.storage)),
                sampler=optuna.samplers.RandomSampler(seed=0),  # this side samples nothing
                pruner=make_pruner(str(self.sweeper.pruner), self.sweeper.get("pruners")),
            )
            frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == self.number)
            # A Trial handle on the running trial: reports and `should_prune` go through the storage.
            self._trial = optuna.trial.Trial(study, frozen._trial_id)
        return self._trial

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        prune = False
        if trainer.is_global_zero:
            value = trainer.callback_metrics.get(self.monitor)
            if value is not None and math.isfinite(float(value)):
                trial = self.trial()
                trial.report(float(value), step=trainer.global_step)
                prune = bool(trial.should_prune())
        prune = trainer.strategy.broadcast(prune, src=0)  # every rank stops at the same step
        if prune:
            self.pruned_step = trainer.global_step
            trainer.should_stop = True
            # Each rank logs it (ranks > 0 to their own train_rank<N>.log): they stop at the same step.
            logger.info(
                "Trial %d pruned at step %d (rank %d).", self.number, trainer.global_step, trainer.global_rank
            )


def trial_pruning(monitor: str) -> Pruning | None:
    """The pruning callback of this job when it is a trial of our Optuna sweeper, else None."""
    found = current_trial()
    if found is None:
        return None
    sweeper, number = found
    if not sweeper.get("storage"):
        raise ConfigError("hydra.sweeper.storage is empty: a trial reports to its study through the storage.")
    return Pruning(sweeper, number, monitor)


# ---- plots ----------------------------------------------------------------------------------------------
def write_study_plots(study: Any, sweep_dir: str | Path, metric: str = "objective") -> None:
    """`optimization_history.png` and `param_importances.png` in `sweep_dir`; a problem only logs.
    `metric` names the objective (the head's monitored metric)."""
    try:
        from factory.training.tracking.plots import plot_history, plot_importances

        trials = study.get_trials(deepcopy=False)
        rows = [
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value if t.state.name == "COMPLETE" else _last(t.intermediate_values),
            }
            for t in trials
        ]
        direction = study.direction.name.lower()
        plot_history(rows, direction, Path(sweep_dir) / "optimization_history.png", metric)
        importances = _importances(study)
        if importances:
            plot_importances(importances, Path(sweep_dir) / "param_importances.png")
    except Exception:  # noqa: BLE001  (a plot never fails a sweep)
        logger.exception("Could not draw the study plots in %s", sweep_dir)


def _last(values: Mapping[int, float]) -> float | None:
    return values[max(values)] if values else None


def _importances(study: Any) -> dict[str, float]:
    """Each parameter's importance for the objective (Optuna's default evaluator over the finished trials);
    {} with fewer than two finished trials or when nothing varies."""
    import optuna

    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    varying = {k for t in done for k in t.params if len({repr(u.params.get(k)) for u in done}) > 1}
    if len(done) < 2 or not varying:
        return {}
    try:
        with warnings.catch_warnings():  # "importances will be equal" while few trials differ
            warnings.simplefilter("ignore")
            return optuna.importance.get_param_importances(study, params=sorted(varying))
    except (RuntimeError, ValueError) as e:
        logger.info("No parameter importances yet: %s", e)
        return {}
