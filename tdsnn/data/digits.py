"""scikit-learn's bundled handwritten digits (UCI optdigits test set): an offline MNIST-like set.

1 797 grey 8 × 8 images of the digits 0–9 (16 intensity levels), shipped inside scikit-learn,
so nothing is downloaded. They are split once, with a fixed permutation that does not depend on
the run's seed (the test split is the same for every run, as MNIST's is): 1 347 training and
450 test images. Images are upsampled to ``image_size`` (bilinear, once, at load time), kept in
memory as uint8 and served as 3-channel ``[3, S, S]`` images in [0, 1].
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import import_optional
from .memory import TensorImageDataset, resize_uint8

__all__ = ["DIGITS_TEST_SIZE", "build_digits"]

DIGITS_TEST_SIZE = 450
_SPLIT_SEED = 20_231_797  # fixed: the split is part of the dataset, not of a run


def build_digits(image_size: int) -> tuple[Dataset, Dataset, list[str]]:
    """Train (1 347) and test (450) splits of the digits at ``image_size`` pixels."""
    datasets = import_optional("sklearn.datasets", "datasets", "dataset 'digits'")
    digits = datasets.load_digits()
    images = np.rint(np.asarray(digits.images, dtype=np.float64) * (255.0 / 16.0))
    images = torch.from_numpy(images.astype(np.uint8)).unsqueeze(1)  # [N, 1, 8, 8]
    labels = torch.from_numpy(np.asarray(digits.target, dtype=np.int64))
    order = torch.from_numpy(np.random.default_rng(_SPLIT_SEED).permutation(len(labels)))
    test, train = order[:DIGITS_TEST_SIZE].sort().values, order[DIGITS_TEST_SIZE:].sort().values
    images = resize_uint8(images, image_size)
    splits = [TensorImageDataset(images[i], labels[i], out_channels=3) for i in (train, test)]
    return splits[0], splits[1], [str(i) for i in range(10)]
