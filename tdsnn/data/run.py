"""The data of one training run: datasets, the validation split, the epoch sampler and the
loaders of ``tdsnn train``, built once per run and per process (rank ``r`` of ``W`` reads its
shard of every batch and of the evaluation splits)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from tdsnn.data import DatasetInfo, build_datasets, make_loader, split_validation
from tdsnn.data.order import EpochSampler, shard_batches
from tdsnn.errors import ConfigError

__all__ = ["EVAL_BATCH", "RunData", "build_run_data"]

EVAL_BATCH = 256  # images per evaluation batch


@dataclass
class RunData:
    """A run's datasets and loaders; ``val_set``/``val_loader`` are None without
    ``--val-size``."""

    train_set: Dataset
    val_set: Dataset | None
    test_set: Dataset
    info: DatasetInfo
    sampler: EpochSampler
    train_loader: DataLoader
    val_loader: DataLoader | None
    test_loader: DataLoader
    seed: int
    num_workers: int
    pin_memory: bool

    def loader(self, dataset: Dataset, batch_sampler: Sampler) -> DataLoader:
        """A loader of ``dataset`` in the order of ``batch_sampler``, as the run's loaders."""
        return make_loader(
            dataset,
            batch_sampler.batch_size,
            shuffle=False,
            seed=self.seed,
            num_workers=self.num_workers,
            batch_sampler=batch_sampler,
            pin_memory=self.pin_memory,
        )


def build_run_data(
    config, rank: int, world_size: int, device: torch.device, *, download: bool
) -> RunData:
    """The datasets and loaders of ``config`` (a :class:`~tdsnn.config.RunConfig`) for process
    ``rank`` of ``world_size``; ``download`` on rank 0 only."""
    data, seed = config.data, config.run.seed
    train_size = None if data.train_size is None else data.train_size + data.val_size
    train_set, test_set, info = build_datasets(
        data.dataset,
        data_root=data.data_root,
        image_size=data.image_size,
        download=download,
        seed=seed,
        train_size=train_size,
        test_size=data.test_size,
    )
    train_set, val_set = split_validation(train_set, data.val_size)
    batch = config.optim.batch_size
    sampler = EpochSampler(len(train_set), batch, seed=seed, rank=rank, world_size=world_size)
    if sampler.batches_per_epoch == 0:
        raise ConfigError(
            f"batch size {batch} x {world_size} process(es) is larger than the "
            f"{len(train_set)} training images; lower --batch-size"
        )
    run = RunData(train_set, val_set, test_set, info, sampler, None, None, None, seed,
                  data.num_workers, device.type == "cuda")  # fmt: skip

    def shard(dataset: Dataset) -> DataLoader:
        batches = shard_batches(len(dataset), EVAL_BATCH, rank=rank, world_size=world_size)
        return run.loader(dataset, batches)

    run.train_loader = run.loader(train_set, sampler)
    run.test_loader = shard(test_set)
    run.val_loader = None if val_set is None else shard(val_set)
    return run
