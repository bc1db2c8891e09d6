"""What the areas represent and what they spend: effective dimensionality, activation
variance, Moran's I, firing rates and synaptic operations.

:func:`representation_metrics` works on the responses: spike counts per image (summed over the
T steps) for LIF units and the activations for ReLU units (T = 1). Every metric applies to
both, but values in counts and in activations are on different scales (participation ratio and
Moran's I are scale-free; the variance and ``mean_count`` are not).

:func:`layer_metrics` works, as Truong & Hasson do, on a layer's continuous pre-activation: the
input current of its units (LIF units: averaged over the T steps; ReLU units: the value the
ReLU is applied to). Moran's I is computed per image on the layer's sheet, with the
neighbourhood of its loss (:func:`neighbour_pairs`), and averaged over images.

:func:`synaptic_operations` counts what an area's synaptic layers (its convolutions, the fc
layer of ``readout``) do per image: one operation per input event and output it feeds
(:func:`fan_out`), against the multiply-accumulates of the same layers run densely for one
step, as a ReLU twin runs them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tdsnn.areas import AreaStack, area_spike_counts
from tdsnn.sheet import Sheet
from tdsnn.spatial import morans_i, morans_i_pairs, pair_adjacency
from tdsnn.topo.pairs import csr_to_pairs, lattice_pairs, radius_pairs
from tdsnn.topo_config import TopoConfig

__all__ = [
    "fan_out",
    "layer_metrics",
    "neighbour_pairs",
    "participation_ratio",
    "representation_metrics",
    "synaptic_operations",
]


def participation_ratio(responses: np.ndarray) -> float:
    """Effective dimensionality ``(Σ λ)² / Σ λ²`` of the covariance of ``responses [S, N]``
    (S stimuli, N units; Gao et al. 2017): 1 when one direction holds all variance, N when
    all N directions hold equal variance. 0 for constant responses."""
    x = np.asarray(responses, dtype=np.float64)
    x = x - x.mean(axis=0)
    # the covariance's eigenvalues are the squared singular values of x (over S - 1)
    small = x @ x.T if x.shape[0] <= x.shape[1] else x.T @ x
    eig = np.clip(np.linalg.eigvalsh(small), 0, None)
    total = eig.sum()
    return float(total**2 / (eig**2).sum()) if total > 0 else 0.0


@torch.no_grad()
def representation_metrics(
    model: AreaStack, images: torch.Tensor, sheets: dict[str, Sheet], batch_size: int = 128
) -> dict[str, dict[str, float]]:
    """Per area: ``participation_ratio`` of the responses (spike counts, or ReLU activations)
    to ``images``, ``activation_variance`` (mean over units of each unit's response variance
    over images), ``mean_count`` (the mean response: spikes per image, or mean activation),
    ``silent_fraction`` (units that respond to none of the images) and, for LIF units,
    ``firing_rate`` (spikes per unit per step); for the last area also ``map_morans_i``,
    Moran's I of its mean-response map on its sheet (neighbours within the area's
    neighbourhood width)."""
    spiking = model.config.neuron != "relu"
    counts = area_spike_counts(model, images.split(batch_size))
    out = {}
    last = model.area_names[-1]
    for name, area_counts in counts.items():
        x = area_counts.flatten(1).double().numpy()  # [S, N]
        out[name] = {
            "participation_ratio": participation_ratio(x),
            "activation_variance": float(x.var(axis=0).mean()),  # population variance
            "mean_count": float(x.mean()),
            "silent_fraction": float((x.sum(axis=0) == 0).mean()),
        }
        if spiking:
            out[name]["firing_rate"] = float(x.mean()) / model.timesteps
        if name == last:
            mean = x.mean(axis=0)
            sheet = sheets[name]
            value = (
                morans_i(mean, sheet.positions.double().numpy(), radius=sheet.neighbourhood_mm)
                if np.ptp(mean) > 0
                else float("nan")
            )
            out[name]["map_morans_i"] = float(value)
    return out


def neighbour_pairs(topo: TopoConfig, sheet: Sheet) -> torch.Tensor:
    """``[P, 2]`` neighbour pairs of an area for Moran's I, the neighbourhood its loss uses:
    lattice neighbours (``topo.connectivity``, ``topo.wrap``) on a ``tiled`` or ``grid`` sheet
    (the grid losses' neighbours; an 11 × 11 grid with 8 neighbours has 420 pairs), else every
    pair within the area's neighbourhood width × ``topo.window_factor`` (STC's windows)."""
    if sheet.layout in ("tiled", "grid"):
        return lattice_pairs(sheet, topo.connectivity, topo.wrap)
    radius = sheet.neighbourhood_mm * topo.window_factor
    return csr_to_pairs(*radius_pairs(sheet.positions, radius))


@torch.no_grad()
def layer_metrics(
    model: AreaStack,
    images: torch.Tensor,
    sheets: dict[str, Sheet],
    layers: tuple[str, ...],
    topo: TopoConfig,
    batch_size: int = 128,
) -> dict[str, dict[str, float]]:
    """Per layer of ``layers``, on its pre-activation (the units' input current) to ``images``:
    ``morans_i`` (per image on the sheet with :func:`neighbour_pairs`, mean over the images
    where it is defined) and ``preactivation_variance`` (each unit's variance over images,
    mean over units)."""
    adjacency = {
        name: pair_adjacency(neighbour_pairs(topo, sheets[name]).numpy(), sheets[name].num_units)
        for name in layers
    }
    moran: dict[str, list[np.ndarray]] = {name: [] for name in layers}
    sums: dict[str, list[np.ndarray]] = {}
    current: dict[str, torch.Tensor] = {}
    hooks = [
        model.areas[name].output_units.register_forward_pre_hook(
            lambda module, args, name=name: current.__setitem__(name, args[0])
        )
        for name in layers
    ]
    try:
        for batch in images.split(batch_size):
            model(batch)
            for name in layers:
                x = current[name].float().mean(0).flatten(1).double().cpu().numpy()  # [B, N]
                moran[name].append(morans_i_pairs(x, adjacency[name]))
                s = sums.setdefault(name, [np.zeros(x.shape[1]), np.zeros(x.shape[1])])
                s[0] += x.sum(0)
                s[1] += (x**2).sum(0)
    finally:
        for hook in hooks:
            hook.remove()
    n = len(images)
    out = {}
    for name in layers:
        values = np.concatenate(moran[name])
        mean, square = sums[name][0] / n, sums[name][1] / n
        out[name] = {
            "morans_i": float(np.nanmean(values)) if np.isfinite(values).any() else float("nan"),
            "preactivation_variance": float(np.clip(square - mean**2, 0, None).mean()),
        }
    return out


def fan_out(layer: nn.Conv2d | nn.Linear, size: tuple[int, int] = (1, 1)) -> torch.Tensor:
    """How many outputs one input element of ``layer`` feeds. A convolution on ``size``
    ``(H, W)`` inputs: ``[H, W]``, per input position the output positions whose window
    covers it (counted, so that stride, padding and dilation are honoured) times
    ``out_channels / groups``; a linear layer: ``out_features`` (a 0-d tensor)."""
    if isinstance(layer, nn.Linear):
        return torch.tensor(float(layer.out_features))
    probe = nn.Conv2d(1, 1, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                      bias=False, padding_mode=layer.padding_mode)  # fmt: skip
    nn.init.ones_(probe.weight)
    x = torch.ones(1, 1, *size, requires_grad=True)
    with torch.enable_grad():
        (covered,) = torch.autograd.grad(probe(x).sum(), x)  # d(sum of outputs)/d(input)
    return covered[0, 0].detach() * (layer.out_channels // layer.groups)


@torch.no_grad()
def synaptic_operations(
    model: AreaStack, images: torch.Tensor, batch_size: int = 128
) -> dict[str, dict[str, float]]:
    """Per area, per image of ``images``: ``dense_macs``, the multiply-accumulates of the
    area's synaptic layers (convolutions; the fc layer of ``readout``) for one step with every
    input counted (what a ReLU twin spends; padding counts nothing), and for LIF units
    ``synaptic_ops``, the operations the spikes cause over all T steps: each nonzero input
    (a spike; the pooled rate into ``readout``'s fc) times the outputs it feeds
    (:func:`fan_out`)."""
    spiking = model.config.neuron != "relu"
    ops = dict.fromkeys(model.area_names, 0.0)
    macs: dict[tuple[str, nn.Module], float] = {}
    fans: dict[tuple[nn.Module, tuple[int, ...]], torch.Tensor] = {}

    def count(layer, args, area):
        x = args[0]  # conv: [T*B, C, H, W]; linear: [T, B, F]
        conv = isinstance(layer, nn.Conv2d)
        size = tuple(x.shape[-2:]) if conv else (1, 1)
        if (layer, size) not in fans:
            fans[layer, size] = fan_out(layer, size).to(x.device)
        fan = fans[layer, size]
        inputs = x.shape[-3] if conv else x.shape[-1]  # input channels or features
        macs[area, layer] = float(fan.sum()) * inputs
        events = (x != 0).sum(dim=tuple(range(x.dim() - 2))) if conv else (x != 0).sum()
        ops[area] += float((events * fan).sum())

    hooks = [
        layer.register_forward_pre_hook(lambda m, args, area=name: count(m, args, area))
        for name, area in model.areas.items()
        for layer in area.modules()
        if isinstance(layer, nn.Conv2d | nn.Linear)
    ]
    try:
        for batch in images.split(batch_size):
            model(batch)
    finally:
        for hook in hooks:
            hook.remove()
    out = {}
    for name in model.area_names:
        out[name] = {"dense_macs": sum(v for (a, _), v in macs.items() if a == name)}
        if spiking:
            out[name]["synaptic_ops"] = ops[name] / len(images)
    return out
