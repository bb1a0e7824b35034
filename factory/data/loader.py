"""The training loader whose position in the epoch is part of a checkpoint, so that a resumed run skips
exactly the batches it already trained on (`factory.training.resume` saves and restores it)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader


class _SkipFirst:
    """A batch sampler that leaves out its first `skip` batches while `skip` is set.

    Its length stays the full length: Lightning counts the batches of an epoch from the loader's length and
    the batches it already saw, so the epoch ends where it would have.
    """

    def __init__(self, batches: Any) -> None:
        self.batches = batches
        self.skip = 0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(iter(self.batches), self.skip, None)


class ResumableDataLoader(DataLoader):
    """A `DataLoader` whose position in the epoch is part of the checkpoint (Lightning's `_Stateful`).

    `state_dict()` holds the shuffling sampler's generator as it was when the current pass began and as it
    is now, and the number of batches given out in this pass. After `load_state_dict()`, the next pass
    either repeats the interrupted one from that generator state, skipping the batches already given out
    (by index: they are not loaded), or, when that pass had ended, starts the next one from the generator
    as it was then.

    Lightning calls these itself when it resumes mid-epoch; `ResumeState` calls `load_state_dict` again
    when training starts, with what Lightning's counters say about the epoch (it also covers a resume at an
    epoch boundary, where Lightning does not). A sampler Lightning puts in for several processes
    (`DistributedSampler`, shuffled by seed and epoch) is skipped the same way. Randomness inside worker
    processes (none in our datasets) is not part of the state.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # DataLoader draws its workers' seed from `generator`, at every pass or (persistent workers) at
        # the first only; a shuffle drawing from the same generator could not be repeated after a
        # restart, so the loader keeps a copy of its own for that seed.
        if self.generator is not None and self._shuffle is self.generator:
            self.generator = torch.Generator().set_state(self.generator.get_state())
        self._skipper: _SkipFirst | None = None
        self._epoch_generator: torch.Tensor | None = None  # the shuffle when this pass began
        self._passes = 0  # passes begun
        self._batches = 0  # batches given out in this pass
        self._resume: dict[str, Any] | None = None

    @property
    def _shuffle(self) -> torch.Generator | None:
        """The generator the sampler shuffles with (RandomSampler's; None for other samplers)."""
        return getattr(self.sampler, "generator", None)

    @property
    def _index_sampler(self) -> Any:  # what DataLoader's iterators draw indices from
        base = super()._index_sampler
        if getattr(self, "_skipper", None) is None or self._skipper.batches is not base:
            self._skipper = _SkipFirst(base)
        return self._skipper

    def __iter__(self) -> Iterator[Any]:
        # A generator: nothing below runs before the first batch is asked for, so a position set after
        # Lightning called iter() (when training starts) still applies.
        position, self._resume = self._resume, None
        shuffle, skip = self._shuffle, 0
        if position is not None:
            rewind = not position.get("finished")
            state = position.get("epoch_generator" if rewind else "generator")
            if state is not None and shuffle is not None:
                shuffle.set_state(state)
            skip = int(position.get("batches", 0)) if rewind else 0
        self._epoch_generator = shuffle.get_state() if shuffle is not None else None
        self._passes += 1
        self._batches = skip
        # Set while the iterator is made: DataLoader's iterators call iter() on the sampler more than once
        # then, and persistent workers reuse theirs for the next pass, which must not skip.
        self._index_sampler.skip = skip
        try:
            batches = super().__iter__()
        finally:
            self._index_sampler.skip = 0
        for batch in batches:
            self._batches += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        shuffle = self._shuffle
        return {
            "epoch_generator": self._epoch_generator,
            "generator": shuffle.get_state() if shuffle is not None else None,
            "batches": self._batches,
            # ResumeState replaces this with what Lightning's counters say (limit_train_batches ends an
            # epoch before the loader does).
            "finished": self._passes == 0 or self._batches >= len(self),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self._resume = dict(state_dict)
