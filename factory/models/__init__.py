"""The architectures; importing this package registers them.

Every module of the package is imported, so an architecture file registers itself by being here: no
list to keep. The shared modules (`modeling`, `layers`, `outputs`, `losses`) register nothing.
"""

import importlib
import pkgutil


def _import_all() -> None:
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


_import_all()
