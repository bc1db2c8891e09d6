"""Input encodings: turn a static image batch into a multi-step input ``[T, B, C, H, W]``.

Images are expected as intensities in [0, 1] (what every dataset of :mod:`tdsnn.data` returns).
A run with ``data.normalize`` (direct encoding only) feeds the model
:func:`normalize_images` of them instead: the model applies it to whatever images it is given
(datasets, probes, perturbed images), so those stay in [0, 1] everywhere else.

- :func:`direct_encode`: the image itself is the input current at every step (the default).
- :func:`rate_encode`: Bernoulli ("Poisson") spikes, one independent draw per step and pixel,
  with firing probability ``p = clamp(image, 0, 1)``; the mean over many steps tends to p.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..choices import ENCODINGS
from ..errors import ConfigError


def _check(images: Tensor, timesteps: int) -> None:
    if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 1:
        raise ConfigError(f"timesteps must be an integer >= 1, got {timesteps!r}")
    if images.ndim != 4:
        raise ValueError(f"images must be [B, C, H, W], got shape {tuple(images.shape)}")


def normalize_images(images: Tensor, normalize: tuple[float, float] | None) -> Tensor:
    """``(images - mean) / std`` with ``normalize = (mean, std)`` (every channel alike), or
    ``images`` themselves when it is None; shapes as ``images``."""
    if normalize is None:
        return images
    mean, std = normalize
    return (images - mean) / std


def direct_encode(images: Tensor, timesteps: int) -> Tensor:
    """Repeat a static image over time without copying.

    Args:
        images: [B, C, H, W] float.
        timesteps: T >= 1.

    Returns:
        [T, B, C, H, W], an ``expand`` view of ``images`` (stride 0 over T: do not write to it;
        call ``.contiguous()`` first if a kernel needs dense memory).
    """
    _check(images, timesteps)
    return images.unsqueeze(0).expand(timesteps, *images.shape)


def rate_encode(images: Tensor, timesteps: int, generator: torch.Generator | None = None) -> Tensor:
    """Bernoulli rate code: ``S[t, b, c, h, w] ~ Bernoulli(clamp(images[b, c, h, w], 0, 1))``.

    Draws are independent over t and pixels. Not differentiable (no gradient reaches images).

    Args:
        images: [B, C, H, W] float intensities (values outside [0, 1] are clamped).
        timesteps: T >= 1.
        generator: optional ``torch.Generator`` on the images' device, for reproducible spikes.

    Returns:
        [T, B, C, H, W] spikes in {0, 1}, same dtype and device as ``images`` (float32 for
        integer inputs).
    """
    _check(images, timesteps)
    dtype = images.dtype if images.is_floating_point() else torch.float32
    p = images.detach().to(dtype).clamp(0.0, 1.0)
    u = torch.rand(
        (timesteps, *images.shape), generator=generator, device=images.device, dtype=dtype
    )
    return (u < p.unsqueeze(0)).to(dtype)


def encode(images: Tensor, timesteps: int, encoding: str = "direct", generator=None) -> Tensor:
    """Dispatch on the encoding name (``"direct"`` or ``"rate"``); shapes as above."""
    if encoding == "direct":
        return direct_encode(images, timesteps)
    if encoding == "rate":
        return rate_encode(images, timesteps, generator=generator)
    raise ConfigError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
