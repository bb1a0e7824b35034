"""Finding a checkpoint's files from a name or a path.

Every reader of checkpoint files goes through `resolve_file`, so that where the files come from (a local
folder today, a hub cache tomorrow) is decided in one place.
"""

from __future__ import annotations

import os
from pathlib import Path


def resolve_file(name_or_path: str | os.PathLike, filename: str, *, required: bool = True) -> Path | None:
    """The local path of `filename` in the checkpoint `name_or_path`, or None if absent and not required."""
    folder = Path(name_or_path)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"Checkpoint {str(name_or_path)!r} is not a folder: expected a directory with {filename}."
        )
    path = folder / filename
    if path.is_file():
        return path
    if required:
        present = sorted(p.name for p in folder.iterdir())[:20]
        raise FileNotFoundError(f"{filename} not found in checkpoint folder {folder} (it holds: {present}).")
    return None
