"""Probe stimuli for topography: full-field sine gratings (DESIGN section 11).

Gratings vary over orientation x spatial frequency x phase, like TDANN's probe set. They are
grey-scale, shown on all three colour channels, with values in [0, 1] (mean 0.5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class GratingSet:
    """``images [N, 3, S, S]`` in [0, 1] and each image's parameters (``[N]`` tensors)."""

    images: Tensor
    orientation_deg: Tensor  # 0 <= theta < 180, the direction of the stripes' normal
    cycles_per_image: Tensor
    phase_deg: Tensor


def sine_gratings(
    image_size: int,
    *,
    orientations: int = 8,
    cycles_per_image: tuple[float, ...] = (2.0, 4.0, 8.0),
    phases: int = 4,
    contrast: float = 1.0,
) -> GratingSet:
    """All combinations of ``orientations`` (evenly over 180 deg) x frequencies x ``phases``."""
    theta = torch.arange(orientations) * (math.pi / orientations)
    freq = torch.tensor(cycles_per_image, dtype=torch.float32)
    phase = torch.arange(phases) * (2 * math.pi / phases)
    theta, freq, phase = (g.reshape(-1) for g in torch.meshgrid(theta, freq, phase, indexing="ij"))
    coords = (torch.arange(image_size, dtype=torch.float32) + 0.5) / image_size  # [S]
    y, x = torch.meshgrid(coords, coords, indexing="ij")  # [S, S] in image widths
    along = x * theta.cos()[:, None, None] + y * theta.sin()[:, None, None]  # [N, S, S]
    wave = torch.sin(2 * math.pi * freq[:, None, None] * along + phase[:, None, None])
    images = (0.5 + 0.5 * contrast * wave).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
    return GratingSet(
        images=images,
        orientation_deg=torch.rad2deg(theta),
        cycles_per_image=freq,
        phase_deg=torch.rad2deg(phase),
    )
