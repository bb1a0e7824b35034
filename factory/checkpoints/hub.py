"""Finding a checkpoint's files from a local folder or a Hugging Face Hub id.

Every reader of checkpoint files goes through `resolve_file`, so where files come from is decided in one
place. Hub files go through `huggingface_hub` itself (its cache layout, locks, `HF_HOME`,
`HF_HUB_OFFLINE`), one file at a time, so only the files a load needs are fetched.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

# What a hub id looks like: `name` or `org/name`; anything else is meant as a path.
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
_SHA = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class HubOptions:
    """Where to look for a hub id: revision (branch, tag or commit), cache folder, offline or not."""

    revision: str | None = None
    cache_dir: str | os.PathLike | None = None
    local_files_only: bool = False


def is_local(name_or_path: str | os.PathLike) -> bool:
    return Path(name_or_path).is_dir()


def resolve_file(
    name_or_path: str | os.PathLike,
    filename: str,
    *,
    required: bool = True,
    hub: HubOptions | None = None,
) -> Path | None:
    """The local path of `filename` in the checkpoint `name_or_path`, or None if absent and not required."""
    folder = Path(name_or_path)
    if folder.is_dir():
        path = folder / filename
        if path.is_file():
            return path
        if required:
            present = sorted(p.name for p in folder.iterdir())[:20]
            raise FileNotFoundError(
                f"{filename} not found in checkpoint folder {folder} (it holds: {present})."
            )
        return None
    name = str(name_or_path)
    if not _REPO_ID.fullmatch(name) or name.startswith((".", "/")):
        raise FileNotFoundError(
            f"Checkpoint {name!r} is neither a local folder nor a hub id like 'org/name' "
            f"(expected a directory with {filename})."
        )
    return _hub_file(name, filename, required, hub or HubOptions())


def _offline(hub: HubOptions) -> bool:
    from huggingface_hub import constants

    return hub.local_files_only or constants.HF_HUB_OFFLINE


def cache_root(hub: HubOptions) -> Path:
    from huggingface_hub import constants

    return Path(hub.cache_dir) if hub.cache_dir is not None else Path(constants.HF_HUB_CACHE)


def cached_commit(repo_id: str, hub: HubOptions) -> str | None:
    """The commit the cache holds for `hub.revision` of `repo_id` (a snapshot folder exists), else None."""
    repo = cache_root(hub) / f"models--{repo_id.replace('/', '--')}"
    revision = hub.revision or "main"
    commit = revision
    if not _SHA.fullmatch(revision):
        ref = repo / "refs" / revision
        if not ref.is_file():
            return None
        commit = ref.read_text().strip()
    return commit if (repo / "snapshots" / commit).is_dir() else None


def commit_of(path: str | os.PathLike) -> str | None:
    """The commit a hub-cache file belongs to (`.../snapshots/<sha>/file`), or None for local folders."""
    parts = Path(path).parts
    if "snapshots" in parts:
        i = parts.index("snapshots")
        if i + 1 < len(parts) and _SHA.fullmatch(parts[i + 1]):
            return parts[i + 1]
    return None


def _how_to_get(repo_id: str, hub: HubOptions) -> str:
    rev = f" --revision {hub.revision}" if hub.revision else ""
    where = f" --cache-dir {hub.cache_dir}" if hub.cache_dir is not None else ""
    return f"fetch it once with network access (`hf download {repo_id}{rev}{where}`), then run offline"


def _hub_file(repo_id: str, filename: str, required: bool, hub: HubOptions) -> Path | None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    revision = hub.revision or "main"
    offline = _offline(hub)
    if offline and cached_commit(repo_id, hub) is None:
        # Decided from the cache folder alone, so an empty cache fails at once rather than after retries.
        raise FileNotFoundError(
            f"{repo_id} at revision {revision!r} is not in the hub cache {cache_root(hub)} and downloads are "
            f"off (HF_HUB_OFFLINE=1 or local_files_only=True): {_how_to_get(repo_id, hub)}."
        )
    try:
        path = hf_hub_download(
            repo_id,
            filename,
            revision=hub.revision,
            cache_dir=hub.cache_dir,
            local_files_only=offline,
        )
    except LocalEntryNotFoundError as e:
        if not offline:
            # Downloads were on: huggingface_hub gives this error when it could not reach the hub and
            # the cache lacks the file. "Downloads are off" would send the user the wrong way.
            raise FileNotFoundError(_unreachable(repo_id, filename, hub, e)) from None
        if not required:
            return None
        raise FileNotFoundError(
            f"{filename} of {repo_id} at revision {revision!r} is not in the hub cache {cache_root(hub)} and "
            f"downloads are off: {_how_to_get(repo_id, hub)}."
        ) from None
    except (RemoteEntryNotFoundError, EntryNotFoundError):
        if not required:
            return None
        raise FileNotFoundError(f"{repo_id} at revision {revision!r} has no file {filename}.") from None
    except RevisionNotFoundError:
        raise FileNotFoundError(f"{repo_id} has no revision {revision!r}.") from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(
            f"Hub repository {repo_id!r} was not found (or is private; log in with `hf auth login`)."
        ) from None
    except Exception as e:
        if _connection_failure(e) is None:
            raise
        raise FileNotFoundError(_unreachable(repo_id, filename, hub, e)) from None
    return Path(path)


def _connection_failure(error: BaseException) -> BaseException | None:
    """The connection or timeout error in `error`'s chain of causes, if any (requests or the socket)."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        names = {c.__name__ for c in type(e).__mro__}
        if isinstance(e, (ConnectionError, TimeoutError)) or names & {
            "ConnectionError",
            "Timeout",
            "ConnectTimeout",
            "ReadTimeout",
            "ConnectError",
            "TimeoutException",
        }:
            return e
        e = e.__cause__ or e.__context__
    return None


def _unreachable(repo_id: str, filename: str, hub: HubOptions, error: BaseException) -> str:
    cause = _connection_failure(error) or error
    return (
        f"The Hugging Face Hub could not be reached to fetch {filename} of {repo_id} "
        f"(revision {hub.revision or 'main'!r}): {type(cause).__name__}: {str(cause)[:200]}. Check the "
        f"network or proxy settings; on a machine without network, set HF_HUB_OFFLINE=1 and use a hub cache "
        f"({cache_root(hub)}) that holds it: {_how_to_get(repo_id, hub)}."
    )
