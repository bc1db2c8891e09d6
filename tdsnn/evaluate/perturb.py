"""Perturbations of trained area stacks and of their inputs (``tdsnn evaluate``).

Every function is deterministic given its ``generator``, leaves its inputs untouched (models
are copied, images returned new) and is the identity at level 0.

- weights: :func:`weight_noise` (Gaussian: scaled to each layer's weight std, absolute, or
  multiplicative; :func:`weight_stds` gives the stds), :func:`magnitude_prune` (the smallest
  |w| of each layer), both on every layer or on the chosen areas;
- channels: :func:`pruned_channels` picks whole output channels of an area (at random, or
  those of smallest L1 norm of incoming weights: Poli et al.'s structured pruning), and
  :func:`channel_units` turns them into units for :func:`silence`;
- inputs (images ``[B, C, H, W]`` in [0, 1]): :data:`INPUT_DEGRADATIONS` = Gaussian (white)
  noise, pink (1/f) noise, salt-and-pepper, Gaussian blur, contrast reduction;
- units: :func:`disc_units` (a cortical lesion) and :func:`scattered_units`, silenced with
  :func:`silence` (any area, the fc ``readout`` layer included; LIF or ReLU units);
- attacks: :func:`fgsm` and :func:`pgd` (L∞) through the surrogate gradients of LIF units, or
  the exact gradients of ReLU units.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tdsnn.areas import AreaStack
from tdsnn.errors import ConfigError
from tdsnn.evaluate.options import WEIGHT_NOISE_SCALES
from tdsnn.sheet import Sheet
from tdsnn.topo.features import incoming_weights

__all__ = [
    "INPUT_DEGRADATIONS",
    "PRUNING_MODES",
    "area_weights",
    "channel_units",
    "check_weight_noise",
    "contrast",
    "degrade",
    "disc_units",
    "fgsm",
    "gaussian_blur",
    "gaussian_noise",
    "magnitude_prune",
    "pgd",
    "pink_noise",
    "pruned_channels",
    "salt_and_pepper",
    "scattered_units",
    "silence",
    "weight_noise",
    "weight_stds",
]


# --------------------------------------------------------------------------- weights


def area_weights(model: AreaStack, areas: tuple[str, ...] | None = None) -> dict[str, Tensor]:
    """The weights the perturbations act on: every convolution and linear weight (name ->
    tensor), or only those inside ``areas``."""
    chosen = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Conv2d | nn.Linear):
            continue
        if areas is not None and not any(name.startswith(f"areas.{a}.") for a in areas):
            continue
        chosen[f"{name}.weight"] = module.weight
    if not chosen:
        raise ConfigError(f"no weights to perturb in areas {areas}")
    return chosen


def weight_stds(model: AreaStack, areas: tuple[str, ...] | None = None) -> dict[str, float]:
    """The standard deviation of each chosen weight (name -> std, in weight units): the unit of
    :func:`weight_noise`'s ``relative`` scale."""
    weights = area_weights(model, areas)
    return {name: float(weight.detach().std()) for name, weight in weights.items()}


def check_weight_noise(level: float, scale: str) -> None:
    """A known ``scale`` (:data:`~tdsnn.evaluate.options.WEIGHT_NOISE_SCALES`) and a finite
    ``level`` >= 0."""
    if scale not in WEIGHT_NOISE_SCALES:
        raise ConfigError(
            f"unknown weight-noise scale {scale!r}; one of {', '.join(WEIGHT_NOISE_SCALES)}"
        )
    if not (math.isfinite(level) and level >= 0):
        raise ConfigError(f"{scale} weight-noise level must be a non-negative number, got {level}")


@torch.no_grad()
def weight_noise(
    model: AreaStack,
    level: float,
    generator: torch.Generator,
    areas: tuple[str, ...] | None = None,
    scale: str = "relative",
) -> AreaStack:
    """A copy of ``model`` with Gaussian noise on every chosen weight ``W``, ``ε ~ N(0, 1)``
    drawn per weight (layer by layer, in :func:`area_weights` order): ``relative``
    ``W + level · std(W) · ε`` (std of that layer's weight), ``absolute`` ``W + level · ε``
    (``level`` in weight units), ``multiplicative`` ``W · (1 + level · ε)``."""
    check_weight_noise(level, scale)
    noisy = copy.deepcopy(model)
    if level == 0:
        return noisy
    for weight in area_weights(noisy, areas).values():
        noise = torch.randn(weight.shape, generator=generator).to(weight.device, weight.dtype)
        if scale == "multiplicative":
            weight.mul_(1 + level * noise)
        else:
            weight.add_(noise * (level * weight.std() if scale == "relative" else level))
    return noisy


@torch.no_grad()
def magnitude_prune(
    model: AreaStack, fraction: float, areas: tuple[str, ...] | None = None
) -> AreaStack:
    """A copy of ``model`` with the ``fraction`` smallest-magnitude weights of each chosen
    layer set to zero (``round(fraction · numel)`` of them; ties broken by position)."""
    if not 0 <= fraction <= 1:
        raise ConfigError(f"pruning fraction must be in [0, 1], got {fraction}")
    pruned = copy.deepcopy(model)
    for weight in area_weights(pruned, areas).values():
        k = round(fraction * weight.numel())
        if k:
            order = weight.abs().flatten().argsort(stable=True)
            weight.view(-1)[order[:k]] = 0
    return pruned


# --------------------------------------------------------------------------- channels

PRUNING_MODES = ("random", "l1-norm")


def pruned_channels(
    model: AreaStack, area: str, fraction: float, mode: str, generator: torch.Generator
) -> Tensor:
    """``round(fraction · C)`` output channels of ``area`` to remove (``int64`` indices):
    drawn at random, or (``l1-norm``) those whose incoming weights have the smallest L1 norm
    (ties broken by position)."""
    if not 0 <= fraction < 1:
        raise ConfigError(f"channel pruning fraction must be in [0, 1), got {fraction:g}")
    if mode not in PRUNING_MODES:
        raise ConfigError(f"unknown channel pruning {mode!r}; one of {', '.join(PRUNING_MODES)}")
    weight = incoming_weights(model.areas[area].output_weight.detach())  # [C, F]
    count = round(fraction * weight.shape[0])
    if mode == "random":
        return torch.randperm(weight.shape[0], generator=generator)[:count]
    return weight.abs().sum(dim=1).cpu().argsort(stable=True)[:count]


def channel_units(shape: tuple[int, int, int], channels: Tensor) -> Tensor:
    """Unit indices (into an area's ``C·H·W`` units, channel-major) of whole ``channels``."""
    _, h, w = shape
    per_channel = torch.arange(h * w)
    return (channels.view(-1, 1) * (h * w) + per_channel).flatten()


# --------------------------------------------------------------------------- inputs


def gaussian_noise(images: Tensor, level: float, generator: torch.Generator) -> Tensor:
    """Additive white noise of standard deviation ``level``, clipped to [0, 1]."""
    noise = torch.randn(images.shape, generator=generator).to(images.device)
    return (images + level * noise).clamp(0, 1)


def pink_noise(images: Tensor, level: float, generator: torch.Generator) -> Tensor:
    """Additive pink (1/f amplitude spectrum) noise, scaled to standard deviation ``level``
    per image and channel, clipped to [0, 1]."""
    b, c, h, w = images.shape
    white = torch.randn((b, c, h, w), generator=generator)
    fy = torch.fft.fftfreq(h)[:, None]
    fx = torch.fft.rfftfreq(w)[None, :]
    radius = torch.sqrt(fy**2 + fx**2)
    radius[0, 0] = 1.0  # the mean is removed below
    pink = torch.fft.irfft2(torch.fft.rfft2(white) / radius, s=(h, w))
    pink = pink - pink.mean(dim=(2, 3), keepdim=True)
    pink = pink / pink.std(dim=(2, 3), keepdim=True).clamp_min(1e-12)
    return (images + level * pink.to(images.device)).clamp(0, 1)


def salt_and_pepper(images: Tensor, level: float, generator: torch.Generator) -> Tensor:
    """A fraction ``level`` of pixels (all channels of a pixel together) set to 0 or 1."""
    b, _, h, w = images.shape
    u = torch.rand((b, 1, h, w), generator=generator).to(images.device)
    salt = torch.rand((b, 1, h, w), generator=generator).to(images.device) < 0.5
    hit = u < level
    out = images.clone()
    out = torch.where(hit & salt, torch.ones_like(out), out)
    return torch.where(hit & ~salt, torch.zeros_like(out), out)


def gaussian_blur(images: Tensor, level: float, generator: torch.Generator | None = None) -> Tensor:
    """Gaussian blur of standard deviation ``level`` pixels (reflected borders)."""
    if level == 0:
        return images.clone()
    radius = max(1, math.ceil(3 * level))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-(x**2) / (2 * level**2))
    kernel = kernel / kernel.sum()
    c = images.shape[1]
    out = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def contrast(images: Tensor, level: float, generator: torch.Generator | None = None) -> Tensor:
    """Contrast reduced by the fraction ``level`` around mid-grey: ``0.5 + (1 − level)(x − 0.5)``
    (1 gives a flat grey image)."""
    return images - level * (images - 0.5)  # this form is exactly the images at level 0


INPUT_DEGRADATIONS: dict[str, Callable[..., Tensor]] = {
    "white-noise": gaussian_noise,
    "pink-noise": pink_noise,
    "salt-and-pepper": salt_and_pepper,
    "blur": gaussian_blur,
    "contrast": contrast,
}


def degrade(kind: str, images: Tensor, level: float, generator: torch.Generator) -> Tensor:
    """:data:`INPUT_DEGRADATIONS` ``[kind]`` at ``level`` (the images themselves at level 0)."""
    if kind not in INPUT_DEGRADATIONS:
        raise ConfigError(f"unknown degradation {kind!r}; one of {', '.join(INPUT_DEGRADATIONS)}")
    if level == 0:
        return images
    return INPUT_DEGRADATIONS[kind](images, level, generator)


# --------------------------------------------------------------------------- lesions


def disc_units(sheet: Sheet, count: int, generator: torch.Generator) -> Tensor:
    """The ``count`` units nearest a random centre on the sheet: a disc-shaped lesion
    (``int64 [count]`` unit indices). The centre is drawn away from the border by the disc's
    expected radius, so that the disc lies on the sheet."""
    n = sheet.num_units
    if not 0 <= count <= n:
        raise ConfigError(f"lesion size must be in [0, {n}] units, got {count}")
    radius = sheet.side_mm * math.sqrt(count / (math.pi * n))
    margin = min(radius, sheet.side_mm / 2)
    centre = margin + torch.rand(2, generator=generator) * (sheet.side_mm - 2 * margin)
    distance = (sheet.positions - centre).norm(dim=1)
    return distance.argsort(stable=True)[:count]


def scattered_units(sheet: Sheet, count: int, generator: torch.Generator) -> Tensor:
    """``count`` units drawn at random over the whole sheet (the control for a lesion)."""
    return torch.randperm(sheet.num_units, generator=generator)[:count]


@contextmanager
def silence(model: AreaStack, area: str, units: Tensor) -> Iterator[None]:
    """Within the block, the ``units`` (indices into the area's ``C·H·W`` units) of ``area``
    are silent: the area's output ``[T, B, C, H, W]`` (spikes, or ReLU activations) is zeroed
    there. Nested blocks silence several areas at once."""

    def hook(module, inputs, output):
        spikes = output[0] if isinstance(output, tuple) else output
        keep = torch.ones(spikes.shape[2:].numel(), dtype=spikes.dtype, device=spikes.device)
        keep[units.to(spikes.device)] = 0
        silenced = spikes * keep.view(spikes.shape[2:])
        return (silenced, *output[1:]) if isinstance(output, tuple) else silenced

    handle = model.areas[area].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


# --------------------------------------------------------------------------- attacks


@contextmanager
def _differentiable_encoding(model: AreaStack) -> Iterator[None]:
    """Rate-coded models: gradients pass the Bernoulli draw straight through (its
    expectation is the image), so attacks can use them; direct coding needs nothing."""
    if model.config.encoding != "rate":
        yield
        return
    original = model.encode

    def encode(images: Tensor) -> Tensor:
        spikes = original(images)
        return spikes + (images.clamp(0, 1) - images.detach().clamp(0, 1)).unsqueeze(0)

    model.encode = encode
    try:
        yield
    finally:
        del model.encode


def _gradient_sign(model: AreaStack, images: Tensor, labels: Tensor) -> Tensor:
    images = images.detach().requires_grad_(True)
    with _differentiable_encoding(model), torch.enable_grad():
        loss = F.cross_entropy(model(images).logits, labels)
        (grad,) = torch.autograd.grad(loss, images)
    return grad.sign()


def fgsm(model: AreaStack, images: Tensor, labels: Tensor, epsilon: float) -> Tensor:
    """Fast gradient sign attack: ``clip(x + ε · sign(∇_x CE))`` to [0, 1]."""
    if epsilon == 0:
        return images
    return (images + epsilon * _gradient_sign(model, images, labels)).clamp(0, 1)


def pgd(
    model: AreaStack,
    images: Tensor,
    labels: Tensor,
    epsilon: float,
    *,
    steps: int = 5,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Projected gradient descent in the L∞ ball of radius ``ε`` (Madry et al.): a random
    start, ``steps`` signed-gradient steps of ``step_size`` (default 2.5 ε / steps), each
    projected back into the ball and [0, 1]."""
    if epsilon == 0:
        return images
    step_size = 2.5 * epsilon / steps if step_size is None else step_size
    start = torch.rand(images.shape, generator=generator).to(images.device) * 2 - 1
    x = (images + epsilon * start).clamp(0, 1)
    for _ in range(steps):
        x = x + step_size * _gradient_sign(model, x, labels)
        x = torch.min(torch.max(x, images - epsilon), images + epsilon).clamp(0, 1)
    return x
