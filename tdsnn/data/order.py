"""Data order: which images each process sees in each step, and in each evaluation.

The order of a training epoch is a fixed function of ``(seed, epoch)``, so a resumed run sees
exactly the batches an uninterrupted one would, and under DDP every rank takes its own shard of
it. Evaluation reads fixed batches of a fixed shard. Both hand out lists of indices, which
:func:`tdsnn.data.make_loader` turns into one slice of an in-memory dataset per batch.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import BatchSampler, Sampler


class EpochSampler(Sampler[list[int]]):
    """Index batches of one epoch: a permutation fixed by ``(seed, epoch)``, sharded by rank.

    Rank ``r`` of ``world_size`` takes slice ``[r·M, (r+1)·M)`` of the permutation
    (``M = size // world_size``) and cuts it into ``M // batch_size`` batches (the rest is
    dropped). :meth:`set_epoch` picks the epoch and the first batch to hand out (on resume), so
    one sampler, and one loader over it, serves the whole run.

    Args:
        size: images in the training split.
        batch_size: images per batch (per process).
        seed: run seed.
        rank, world_size: this process and the number of processes.
    """

    def __init__(
        self, size: int, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1
    ) -> None:
        self.size, self.batch_size, self.seed = int(size), int(batch_size), int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.per_rank = self.size // self.world_size
        self.batches_per_epoch = self.per_rank // self.batch_size
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Hand out epoch ``epoch`` from its batch ``start_batch`` on."""
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator)
        shard = order[self.rank * self.per_rank : (self.rank + 1) * self.per_rank]
        b = self.batch_size
        for i in range(self.start_batch, self.batches_per_epoch):
            yield shard[i * b : (i + 1) * b].tolist()

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch


def shard_batches(
    size: int, batch_size: int, *, rank: int = 0, world_size: int = 1
) -> BatchSampler:
    """Fixed index batches of one rank's shard of an evaluation split, the same every time.

    Rank ``r`` of ``world_size`` takes images ``r, r + world_size, r + 2·world_size, …`` of the
    ``size`` images and cuts them, in that order, into consecutive batches of ``batch_size``
    (the last one may be shorter); the shards of all ranks hold every image exactly once.
    """
    return BatchSampler(range(rank, size, world_size), batch_size, drop_last=False)
