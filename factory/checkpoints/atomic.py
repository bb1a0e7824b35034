"""The one atomic writer: a file is always either the previous one or the new one, never half of each.

Every write goes to a temporary file in the target's folder (`.<name>.<pid>.<random>.tmp`, so a rename
never crosses file systems and two writers never share one), is fsynced, renamed into place, and the
folder is fsynced so the rename itself survives a crash. If anything fails (a full disk, an interrupt)
the temporary files are removed and the exception raised, and the targets are untouched.

`atomic_files` renames several files together after all of them were written (a sharded checkpoint);
`atomic_write` is one file through a callback that writes to a path; `atomic_write_text` and
`atomic_save` (`torch.save`) are the common cases.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_files(folder: str | os.PathLike) -> Iterator[Callable[[str], Path]]:
    """Temporary paths for files of `folder`, renamed into place together when the block ends.

    `temp(name)` gives the path to write `folder/name` to. On leaving the block every temporary file is
    fsynced, then renamed onto its name; on an exception all of them are removed and nothing is renamed.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}

    def temp(name: str) -> Path:
        if name in written:
            raise ValueError(f"{folder / name} is already being written in this block.")
        written[name] = _new_temp(folder / name)
        return written[name]

    try:
        yield temp
        for tmp in written.values():
            _fsync_file(tmp)
        for name, tmp in written.items():
            os.replace(tmp, folder / name)
    except BaseException:
        for tmp in written.values():  # those renamed already are gone: nothing to remove
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise
    _fsync_dir(folder)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """`write(tmp)` writes the file's content to the path `tmp`; it then replaces `path` atomically."""
    path = Path(path)
    with atomic_files(path.parent) as temp:
        write(temp(path.name))
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """`path.write_text(text, encoding="utf-8")`, atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """`torch.save(obj, path)`, atomically."""
    import torch  # here: the text writers serve code that never imports torch

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    return atomic_write(path, write)


def _new_temp(target: Path) -> Path:
    """An empty new file beside `target`, created with the umask's permissions as `open` would (mkstemp's
    0600 would make a checkpoint unreadable to the group that reads the others)."""
    while True:
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(folder: Path) -> None:
    """Make the renames themselves durable (POSIX; elsewhere a no-op)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
