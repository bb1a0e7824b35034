"""Reading a JSON file that someone else wrote (a checkpoint's config or index): every way it can be
unreadable becomes one error class naming the file. Below the config module, which reads config.json
through it, and the weight loader, which reads the shard index."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class _LongInt:
    """An integer literal too long for Python's int-string limit, kept aside to name its key."""

    def __init__(self, digits: str) -> None:
        self.digits = len(digits.lstrip("-"))


def _parse_int(text: str) -> int | _LongInt:
    try:
        return int(text)
    except ValueError:  # beyond sys.get_int_max_str_digits(): no config value is that large
        return _LongInt(text)


def _long_int_key(value: Any, path: str = "") -> tuple[str, int] | None:
    if isinstance(value, _LongInt):
        return path.lstrip(".") or "(top level)", value.digits
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        found = _long_int_key(v, f"{path}.{k}" if isinstance(k, str) else f"{path}[{k}]")
        if found:
            return found
    return None


def read_json(path: Path, error: type[Exception]) -> Any:
    """The JSON value in `path`; anything unreadable raises `error` naming the file (and key, if any).

    Besides bad syntax: bytes that are not UTF-8, nesting too deep for the parser (RecursionError) and
    integers past Python's int-string limit (ValueError) all pass `json.JSONDecodeError` by.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{path} is not UTF-8 text: byte {e.object[e.start]:#04x} at offset {e.start}.") from None
    try:
        value = json.loads(text, parse_int=_parse_int)
    except json.JSONDecodeError as e:
        raise error(f"{path} is not valid JSON: {e}") from None
    except RecursionError:
        raise error(f"{path} is nested too deeply to be a config (thousands of levels).") from None
    found = _long_int_key(value)
    if found:
        key, digits = found
        raise error(f"{path}: {key} is an integer of {digits} digits; no valid value is that large.")
    return value
