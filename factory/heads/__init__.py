"""Heads: one task per file, each registered with `@register_head` (see `factory.heads.head`)."""

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

__all__ = ["DataSplits", "Encoded", "Head", "Option", "get_head", "heads", "register_head", "unregister_head"]
