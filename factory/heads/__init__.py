"""Heads: one task per file, each registered with `@register_head` (see `factory.heads.head`).

Importing this package imports every module in it, so that each head file registers itself.
"""

import importlib
import pkgutil

from factory.heads.head import (
    DataSplits,
    Encoded,
    Head,
    Option,
    get_head,
    heads,
    register_head,
    unregister_head,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["DataSplits", "Encoded", "Head", "Option", "get_head", "heads", "register_head", "unregister_head"]
