"""torchvision-backed datasets: MNIST, CIFAR-10 and ImageNet-style image folders.

Every builder checks the expected files itself *before* handing the folder to torchvision, so a
missing or misplaced folder is one :class:`~tdsnn.errors.DataError` line naming the exact path,
never torchvision's traceback. torchvision is imported lazily (only these builders need it): a
torchvision build that does not match the installed torch raises at import time, often with a
``RuntimeError``, and that becomes one :class:`TorchvisionUnavailable` line.

MNIST and CIFAR-10 are decoded once into memory (``uint8``), resized to ``image_size`` in one
batched pass, and served by :class:`~tdsnn.data.memory.TensorImageDataset`; MNIST's single
channel is repeated to 3 channels on access. Image folders are decoded lazily per item
(``Resize(image_size)`` of the short side, then ``CenterCrop(image_size)``). All items are
``(float32 [3, image_size, image_size] in [0, 1], int)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import DataError, UserError, one_line
from .memory import TensorImageDataset, resize_uint8

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_FILES = (
    *(f"data_batch_{i}" for i in range(1, 6)),
    "test_batch",
    "batches.meta",
)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""File suffixes (case-insensitive) that torchvision's ImageFolder accepts as images."""


class TorchvisionUnavailable(UserError, ImportError):
    """torchvision is missing or does not match the installed torch."""


def import_torchvision() -> Any:
    """Import torchvision, turning any failure into one :class:`TorchvisionUnavailable` line."""
    try:
        import torchvision
    except Exception as exc:  # a torch/torchvision mismatch raises RuntimeError, not ImportError
        raise TorchvisionUnavailable(
            f"torchvision could not be imported ({one_line(exc, typed=True)}); install the "
            "torchvision "
            f"release built for torch {torch.__version__} (same version line and CUDA variant, "
            "from the same package index as torch), or use --dataset shapes, which needs no "
            "torchvision"
        ) from exc
    return torchvision


def _construct(cls: Any, what: str, where: Path, **kwargs: Any) -> Any:
    """Call a torchvision dataset constructor; any failure becomes one DataError line."""
    try:
        return cls(**kwargs)
    except UserError:
        raise
    except Exception as exc:
        action = (
            "check the network connection or fetch the files by hand"
            if kwargs.get("download")
            else "delete the damaged files and fetch them again with --download"
        )
        raise DataError(
            f"{what} under {where} could not be loaded ({one_line(exc, typed=True)}); the files "
            f"may be corrupt or truncated: {action}"
        ) from exc


# --------------------------------------------------------------------------------------------
# MNIST
# --------------------------------------------------------------------------------------------


def _check_mnist(root: Path) -> None:
    raw = root / "MNIST" / "raw"
    processed = root / "MNIST" / "processed"
    names = [name for pair in MNIST_FILES.values() for name in pair]
    missing = [name for name in names if not (raw / name).is_file()]
    if not missing:
        return
    if (processed / "training.pt").is_file() and (processed / "test.pt").is_file():
        return  # torchvision's legacy pre-processed format
    expected = ", ".join(names)
    if all((raw / f"{name}.gz").is_file() for name in missing):
        raise DataError(
            f"MNIST under {raw} holds only the .gz archives of {', '.join(missing)}; "
            f"decompress them there (gunzip {raw}/*.gz), or add --download, which extracts "
            "archives that are already present without fetching them"
        )
    raise DataError(
        f"MNIST not found under {raw} (missing {', '.join(missing)}; expected {expected}); pass "
        "--data-root pointing at a folder that holds MNIST/raw, or add --download to fetch it"
    )


def build_mnist(root: Path, image_size: int, download: bool) -> tuple[Dataset, Dataset, list]:
    """MNIST train (60 000) and test (10 000) as 3-channel ``[3, S, S]`` images in [0, 1]."""
    if not download:
        _check_mnist(root)
    tv = import_torchvision()
    where = root / "MNIST" / "raw"
    out = []
    for train in (True, False):
        ds = _construct(
            tv.datasets.MNIST, "MNIST", where, root=str(root), train=train, download=download
        )
        images, labels = _as_tensor(ds.data), _as_tensor(ds.targets)
        if images.ndim != 3 or images.dtype != torch.uint8 or labels.shape != images.shape[:1]:
            raise DataError(
                f"MNIST under {where} is malformed (images {tuple(images.shape)} "
                f"{images.dtype}, labels {tuple(labels.shape)}; expected uint8 [N, 28, 28] and "
                "[N]); delete the files and fetch them again with --download"
            )
        _check_labels(labels, 10, "MNIST", where)
        images = resize_uint8(images.unsqueeze(1), image_size)  # [N, 1, S, S]
        out.append(TensorImageDataset(images, labels, out_channels=3))
    return out[0], out[1], [str(i) for i in range(10)]


# --------------------------------------------------------------------------------------------
# CIFAR-10
# --------------------------------------------------------------------------------------------


def _check_cifar10(root: Path) -> None:
    folder = root / CIFAR10_FOLDER
    missing = [name for name in CIFAR10_FILES if not (folder / name).is_file()]
    if not missing:
        return
    if not folder.is_dir() and (root / "cifar-10-python.tar.gz").is_file():
        raise DataError(
            f"CIFAR-10 archive {root / 'cifar-10-python.tar.gz'} is not extracted; extract it "
            f"there (tar xzf) so that {folder} exists, or add --download, which extracts an "
            "archive that is already present without fetching it"
        )
    raise DataError(
        f"CIFAR-10 not found under {folder} (missing {', '.join(missing)}; expected "
        f"{', '.join(CIFAR10_FILES)}); pass --data-root pointing at the folder that holds "
        f"{CIFAR10_FOLDER}/, or add --download to fetch it"
    )


def build_cifar10(root: Path, image_size: int, download: bool) -> tuple[Dataset, Dataset, list]:
    """CIFAR-10 train (50 000) and test (10 000) as ``[3, S, S]`` images in [0, 1]."""
    if not download:
        _check_cifar10(root)
    tv = import_torchvision()
    where = root / CIFAR10_FOLDER
    out, classes = [], []
    for train in (True, False):
        ds = _construct(
            tv.datasets.CIFAR10, "CIFAR-10", where, root=str(root), train=train, download=download
        )
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # [N, 3, 32, 32]
        labels = torch.as_tensor(ds.targets, dtype=torch.int64)
        _check_labels(labels, 10, "CIFAR-10", where)
        out.append(TensorImageDataset(resize_uint8(images, image_size), labels, out_channels=3))
        classes = list(ds.classes)
    return out[0], out[1], classes


# --------------------------------------------------------------------------------------------
# ImageNet-style folders
# --------------------------------------------------------------------------------------------


def _has_image(folder: Path) -> bool:
    for _dirpath, _dirnames, filenames in os.walk(folder, followlinks=True):
        if any(name.lower().endswith(IMAGE_EXTENSIONS) for name in filenames):
            return True
    return False


def _image_classes(split_dir: Path, root: Path) -> list[str]:
    layout = f"expected {root}/train/<class>/*.JPEG and {root}/val/<class>/*.JPEG"
    if not split_dir.is_dir():
        raise DataError(
            f"image folder {split_dir} not found ({layout}); pass --data-root pointing at the "
            "folder that holds train/ and val/"
        )
    classes = sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir())
    if not classes:
        raise DataError(
            f"image folder {split_dir} has no class sub-folders ({layout}); put each class's "
            "images in a sub-folder named after the class"
        )
    empty = [split_dir / c for c in classes if not _has_image(split_dir / c)]
    if empty:
        shown = ", ".join(str(p) for p in empty[:5]) + (" ..." if len(empty) > 5 else "")
        raise DataError(
            f"{len(empty)} class folder(s) hold no images ({', '.join(IMAGE_EXTENSIONS)}): "
            f"{shown}; add images or remove the empty folders"
        )
    return classes


def load_rgb(path: str) -> Any:
    """Open an image file as an RGB PIL image; an unreadable file is a DataError naming it."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert("RGB")
    except Exception as exc:
        raise DataError(
            f"could not read image {path} ({one_line(exc, typed=True)}); remove or replace the file"
        ) from exc


def build_imagefolder(root: Path, image_size: int) -> tuple[Dataset, Dataset, list]:
    """``root/train/<class>/...`` and ``root/val/<class>/...`` via torchvision's ImageFolder.

    Labels are the sorted class-folder names' indices; train and val must have the same
    classes. Images: RGB, ``Resize(image_size)`` (short side), ``CenterCrop(image_size)``,
    ``ToTensor`` -> float32 [3, S, S] in [0, 1]. Decoding is lazy (use loader workers).
    """
    train_classes = _image_classes(root / "train", root)
    val_classes = _image_classes(root / "val", root)
    if train_classes != val_classes:
        only_train = sorted(set(train_classes) - set(val_classes))[:5]
        only_val = sorted(set(val_classes) - set(train_classes))[:5]
        raise DataError(
            f"class folders differ between {root / 'train'} and {root / 'val'} "
            f"(only in train: {only_train}, only in val: {only_val}); both splits need the "
            "same class sub-folders so that labels agree"
        )
    tv = import_torchvision()
    t = tv.transforms
    transform = t.Compose([t.Resize(image_size), t.CenterCrop(image_size), t.ToTensor()])
    out = [
        _construct(
            tv.datasets.ImageFolder,
            "image folder",
            root / split,
            root=str(root / split),
            transform=transform,
            loader=load_rgb,
        )
        for split in ("train", "val")
    ]
    return out[0], out[1], train_classes


# --------------------------------------------------------------------------------------------


def _as_tensor(x: Any) -> Tensor:
    return x if isinstance(x, Tensor) else torch.as_tensor(x)


def _check_labels(labels: Tensor, num_classes: int, what: str, where: Path) -> None:
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise DataError(
            f"{what} under {where} has labels outside 0..{num_classes - 1} "
            f"(found {int(labels.min())}..{int(labels.max())}); the label files are corrupt: "
            "delete them and fetch them again with --download"
        )
