"""In-memory image dataset: uint8 images held as one tensor, served as float32 in [0, 1]."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset


class TensorImageDataset(Dataset):
    """Images kept in memory as ``uint8 [N, C, H, W]`` with ``int64 [N]`` labels.

    Items are ``(image: float32 [out_channels, H, W] in [0, 1], label: int)``; indexing with a
    list of indices returns the whole batch at once (see :func:`tdsnn.data.make_loader`). A
    one-channel store (MNIST) is repeated to ``out_channels`` (3) on access, so memory holds one
    channel.

    Args:
        images: [N, C, H, W] uint8, C in {1, 3}.
        labels: [N] integer class indices.
        out_channels: channels of each returned image; C must be 1 or equal to it.
    """

    def __init__(self, images: Tensor, labels: Tensor, out_channels: int = 3) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                f"images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}"
            )
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"labels must be [N] with N = {images.shape[0]}, got {tuple(labels.shape)}"
            )
        if images.shape[1] not in (1, out_channels):
            raise ValueError(
                f"images have {images.shape[1]} channels; expected 1 or {out_channels}"
            )
        self.images = images.contiguous()
        self.labels = labels.to(torch.int64).contiguous()
        self.out_channels = out_channels

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int | list[int]) -> tuple[Tensor, int | Tensor]:
        """One image ``([out_channels, H, W], int)``, or with a list of indices a whole batch
        ``([B, out_channels, H, W], int64 [B])`` converted in one go (no collation needed)."""
        if isinstance(index, list):
            images = self.images[index].to(torch.float32).div_(255.0)  # [B, C, H, W]
            if images.shape[1] != self.out_channels:
                images = images.repeat(1, self.out_channels, 1, 1)
            return images, self.labels[index]
        img = self.images[index].to(torch.float32).div_(255.0)  # [C, H, W]
        if img.shape[0] != self.out_channels:
            img = img.repeat(self.out_channels, 1, 1)
        return img, int(self.labels[index])


def resize_uint8(images: Tensor, image_size: int, chunk: int = 4096) -> Tensor:
    """Resize ``uint8 [N, C, h, w]`` images to ``[N, C, image_size, image_size]``.

    Bilinear with anti-aliasing (area-like when shrinking); returns the input unchanged when
    it already has the size. Non-square inputs are resized to the square directly.
    """
    if images.shape[-2:] == (image_size, image_size):
        return images
    out = torch.empty(*images.shape[:2], image_size, image_size, dtype=torch.uint8)
    for lo in range(0, images.shape[0], chunk):
        x = images[lo : lo + chunk].to(torch.float32)
        y = F.interpolate(
            x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True
        )
        out[lo : lo + chunk] = y.round_().clamp_(0, 255).to(torch.uint8)
    return out
