"""Code of the user's that registers architectures, models and heads defined outside factory.

A plugin is a module (`pkg.module`) or a module and a function to call after importing it
(`pkg.module:register`). Importing code runs it, so only plugins the user names (on the command line, or
in a call) are imported: a config that someone else wrote (a run dir's `.hydra/config.yaml`) only names
them, and the caller offers those names to the user instead of importing them.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence

from factory.contract.errors import ConfigError

logger = logging.getLogger(__name__)

# What this process imported already: a sweep trains many runs in one process, and a head or an
# architecture registers once.
_IMPORTED: set[str] = set()


def import_plugins(names: Sequence[str] | str | None, key: str = "plugins") -> list[str]:
    """Import each plugin of `names` (once per process) and return those imported by this call.

    Raises:
        ConfigError: a plugin that cannot be imported, that has no such function, or that raises while
            importing or registering; the message names it and `key` (the option the user typed).
    """
    if names is None:
        return []
    names = [names] if isinstance(names, str) else list(names)
    imported = []
    for name in names:
        name = str(name)
        if name in _IMPORTED:
            continue
        module_name, _, function = name.partition(":")
        try:
            module = importlib.import_module(module_name)
            if function:
                getattr(module, function)()
        except (ImportError, AttributeError) as e:
            raise ConfigError(
                f"{key}: cannot load {name!r} ({type(e).__name__}: {e}); give an importable module, "
                "or module:function to call after importing it.",
                key=key,
            ) from None
        except ConfigError as e:  # a registration refused: the registry's message names the piece
            raise ConfigError(f"{key}: {name!r} could not register: {e}", key=key) from None
        except Exception as e:  # noqa: BLE001 (the user's code: whatever it raises is reported, not a traceback)
            raise ConfigError(f"{key}: importing {name!r} raised {type(e).__name__}: {e}", key=key) from None
        _IMPORTED.add(name)
        imported.append(name)
    if imported:
        logger.info("Imported plugins: %s", ", ".join(imported))
    return imported
