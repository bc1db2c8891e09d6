"""What the areas represent: effective dimensionality, activation variance, Moran's I.

:func:`representation_metrics` works on the responses: spike counts per image (summed over the
T steps) for LIF units and the activations for ReLU units (T = 1). Every metric applies to
both, but values in counts and in activations are on different scales (participation ratio and
Moran's I are scale-free; the variance and ``mean_count`` are not).

:func:`layer_metrics` works, as Truong & Hasson do, on a layer's continuous pre-activation: the
input current of its units (LIF units: averaged over the T steps; ReLU units: the value the
ReLU is applied to). Moran's I is computed per image on the layer's sheet, with the
neighbourhood of its loss (:func:`neighbour_pairs`), and averaged over images.
"""

from __future__ import annotations

import numpy as np
import torch

from tdsnn.areas import AreaStack, area_spike_counts
from tdsnn.sheet import Sheet
from tdsnn.spatial import morans_i, morans_i_pairs
from tdsnn.topo.pairs import csr_to_pairs, lattice_pairs, radius_pairs
from tdsnn.topo_config import TopoConfig

__all__ = ["layer_metrics", "neighbour_pairs", "participation_ratio", "representation_metrics"]


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
    over images), ``mean_count`` (the mean response: spikes per image, or mean activation);
    for the last area also ``map_morans_i``, Moran's I of its mean-response map on its sheet
    (neighbours within the area's neighbourhood width)."""
    counts = area_spike_counts(model, images.split(batch_size))
    out = {}
    last = model.area_names[-1]
    for name, area_counts in counts.items():
        x = area_counts.flatten(1).double().numpy()  # [S, N]
        out[name] = {
            "participation_ratio": participation_ratio(x),
            "activation_variance": float(x.var(axis=0).mean()),  # population variance
            "mean_count": float(x.mean()),
        }
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
    pairs = {name: neighbour_pairs(topo, sheets[name]).numpy() for name in layers}
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
                moran[name].append(morans_i_pairs(x, pairs[name]))
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
