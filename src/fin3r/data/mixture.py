"""The data mixture: a fixed number of samples per source per epoch, in single-source batches.

Fin3R's recipe draws, every epoch, 20,000 SA-1B images (teacher labels) + 1,000 Hypersim +
1,000 TartanAir multi-view samples (replay). :class:`MixtureSampler` plans such an epoch:

1. for every source, ``counts[source]`` indices are drawn from ``range(source_sizes[source])``
   as consecutive fresh permutations (each index at most once per pass through the source; a
   count larger than the source takes several passes) -- the ``N @ dataset`` practice of DUSt3R;
2. each source's draws are cut into batches of ``batch_size`` (a last partial batch is filled
   with further draws of the same source, so every batch is full and single-source);
3. the batches of all sources are shuffled together; the global list is padded by repeating its
   first batches to a multiple of ``world_size``, and rank ``r`` takes batches ``r::world_size``
   (DistributedSampler semantics: disjoint shares, the same number of batches on every rank).

Everything is a pure function of ``(seed, epoch)``. Resuming: ``state_dict()`` records the epoch
and how many samples this rank has consumed in it; after ``load_state_dict`` the next iteration
skips them (the offset applies to one epoch; ``set_epoch`` to another epoch clears it).

:class:`MixtureDataset` maps the sampler's ``(source, index)`` items to samples, so a
``torch.utils.data.DataLoader(MixtureDataset(datasets), batch_sampler=sampler)`` works.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Mapping

import numpy as np
import torch

__all__ = ["MixtureSampler", "MixtureDataset", "DEFAULT_COUNTS"]

DEFAULT_COUNTS = {"sa1b": 20_000, "hypersim": 1_000, "tartanair": 1_000}


class MixtureSampler(torch.utils.data.Sampler):
    """Batch sampler of single-source batches ``[(source, index), ...]``.

    Args:
        source_sizes: number of samples each source's data set holds, e.g. ``{"sa1b": 11186}``.
        counts: samples to draw from each source per epoch (default :data:`DEFAULT_COUNTS` for the
            given sources); a source with count 0 is skipped.
        batch_size: samples per batch (per rank).
        seed: the plan is a pure function of ``(seed, epoch)``.
        rank, world_size: this process's share (DistributedSampler semantics).
    """

    def __init__(
        self,
        source_sizes: Mapping[str, int],
        counts: Mapping[str, int] | None = None,
        batch_size: int = 1,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        counts = dict(DEFAULT_COUNTS if counts is None else counts)
        for name, n in counts.items():
            if n < 0:
                raise ValueError(f"counts[{name!r}] = {n} is negative")
            if n > 0 and source_sizes.get(name, 0) <= 0:
                raise ValueError(f"source {name!r} has {n} samples per epoch but an empty or missing data set "
                                 f"(sizes: {dict(source_sizes)})")
        self.source_sizes = {k: int(v) for k, v in source_sizes.items()}
        self.counts = {k: int(v) for k, v in counts.items() if v > 0}
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch = 0
        self._offset_batches = 0  # batches of this rank already consumed in self.epoch
        self._yielded = 0

    # --- the plan ------------------------------------------------------------------------
    def batches_per_source(self) -> dict[str, int]:
        return {s: math.ceil(n / self.batch_size) for s, n in self.counts.items()}

    def num_global_batches(self) -> int:
        total = sum(self.batches_per_source().values())
        return math.ceil(total / self.world_size) * self.world_size if total else 0

    def __len__(self) -> int:
        """Batches per epoch on this rank (before any resume offset)."""
        return self.num_global_batches() // self.world_size

    def global_plan(self, epoch: int | None = None) -> list[list[tuple[str, int]]]:
        """All ranks' batches of ``epoch`` in global order (rank r takes ``[r::world_size]``)."""
        epoch = self.epoch if epoch is None else int(epoch)
        batches: list[list[tuple[str, int]]] = []
        for k, source in enumerate(sorted(self.counts)):
            rng = np.random.default_rng([self.seed, epoch, k, 0x5EED])
            n_batches = math.ceil(self.counts[source] / self.batch_size)
            need, size = n_batches * self.batch_size, self.source_sizes[source]
            draws = np.concatenate([rng.permutation(size) for _ in range(math.ceil(need / size))])[:need]
            batches += [[(source, int(i)) for i in draws[b * self.batch_size:(b + 1) * self.batch_size]]
                        for b in range(n_batches)]
        order = np.random.default_rng([self.seed, epoch, 0xB47C]).permutation(len(batches))
        batches = [batches[i] for i in order]
        if batches and len(batches) % self.world_size:
            pad = self.world_size - len(batches) % self.world_size
            batches += [batches[i % len(batches)] for i in range(pad)]
        return batches

    def __iter__(self) -> Iterator[list[tuple[str, int]]]:
        mine = self.global_plan()[self.rank::self.world_size]
        start, self._offset_batches = self._offset_batches, 0
        self._yielded = start
        for batch in mine[start:]:
            self._yielded += 1
            yield batch

    # --- epochs and resuming ------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        if int(epoch) != self.epoch:
            self._offset_batches = 0
        self.epoch = int(epoch)

    def state_dict(self, consumed_samples: int | None = None) -> dict[str, Any]:
        """``{"epoch", "offset", "seed", ...}``: ``offset`` = samples of this rank consumed in the
        epoch; default: what the current iterator has yielded (pass the count the training loop
        actually used when a DataLoader prefetches ahead)."""
        offset = self._yielded * self.batch_size if consumed_samples is None else int(consumed_samples)
        return {"epoch": self.epoch, "offset": offset, "seed": self.seed, "batch_size": self.batch_size,
                "counts": dict(self.counts), "rank": self.rank, "world_size": self.world_size}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume: the next ``__iter__`` continues epoch ``state["epoch"]`` after ``state["offset"]``
        samples (rounded down to whole batches)."""
        for key in ("seed", "batch_size"):
            if key in state and int(state[key]) != getattr(self, key):
                raise ValueError(f"cannot resume: the state's {key}={state[key]} differs from {getattr(self, key)}")
        if "counts" in state and dict(state["counts"]) != self.counts:
            raise ValueError(f"cannot resume: the state's counts {dict(state['counts'])} differ from {self.counts}")
        self.epoch = int(state["epoch"])
        self._offset_batches = int(state.get("offset", 0)) // self.batch_size
        self._yielded = self._offset_batches


class MixtureDataset(torch.utils.data.Dataset):
    """``(source, index) -> datasets[source][index]`` so a DataLoader can use a
    :class:`MixtureSampler` as ``batch_sampler``. ``len`` is the sum of the sources' sizes (the
    sampler, not the length, decides what is read)."""

    def __init__(self, datasets: Mapping[str, Any]):
        self.datasets = dict(datasets)

    def sizes(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.datasets.items()}

    def __len__(self) -> int:
        return sum(self.sizes().values())

    def __getitem__(self, item: tuple[str, int]) -> Any:
        source, index = item
        if source not in self.datasets:
            raise KeyError(f"no data set for source {source!r} (have {sorted(self.datasets)})")
        return self.datasets[source][index]
