"""Every error class the library raises for a user's mistake, in one module at the bottom of the package,
so that each layer raises them without importing the layer that owns the concept, and the entry points
can turn each one into a message."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config value or key that is not valid; the message names the key, the value and the choices.

    `key` is the offending field (when there is one), so callers can name the path the user typed.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class RegistryError(ConfigError, KeyError):
    """An unknown or duplicate architecture or head name, or a class that breaks the contract."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class DataError(ValueError):
    """Data that cannot be used: the message names the file, and the line or column when there is one."""


class InferenceError(ConfigError):
    """A bad command-line key or value, a bad input record, or a model folder that cannot serve it."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded as asked; the message names the keys and files involved.

    `mismatched` holds `(key, checkpoint shape, model shape)` when weights did not fit the model.
    """

    def __init__(self, message: str, mismatched: list[tuple[str, tuple, tuple]] | None = None) -> None:
        super().__init__(message)
        self.mismatched = list(mismatched or [])


class NonFiniteError(RuntimeError):
    """Training produced a non-finite loss or non-finite weights."""


# What an entry point (train.py, infer.py) turns into its message and exit status 1, never a traceback:
# every class above (RegistryError and InferenceError are ConfigErrors), and the operating system's
# refusals (a missing file, a full disk, a permission) and undecodable text.
USER_ERRORS: tuple[type[Exception], ...] = (
    ConfigError,
    DataError,
    CheckpointError,
    NonFiniteError,
    OSError,
    UnicodeError,
)
