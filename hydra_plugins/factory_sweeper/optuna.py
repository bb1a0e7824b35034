"""Hydra finds sweeper classes only in the `hydra_plugins` namespace package, and imports every module
there whenever any Hydra app starts: this names our sweeper there and imports factory (torch, Optuna) only
when a sweep uses it.

The sweeper is `factory.training.sweeps.study.OptunaSweeper`; `hydra/sweeper=optuna`
(conf/hydra/sweeper/optuna.yaml) selects it.
"""

from typing import Any

from hydra.plugins.sweeper import Sweeper


class OptunaSweeper(Sweeper):
    """`factory.training.sweeps.study.OptunaSweeper` under the name Hydra accepts for a plugin."""

    def __init__(self, **settings: Any) -> None:
        from factory.training.sweeps.study import OptunaSweeper as Study

        self.study = Study(**settings)

    def setup(self, **kwargs: Any) -> None:
        self.study.setup(**kwargs)

    def sweep(self, arguments: list[str]) -> Any:
        return self.study.sweep(arguments)
