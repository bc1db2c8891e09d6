"""What the areas represent: effective dimensionality, activation variance, Moran's I.

The responses are spike counts per image (summed over the T steps) for LIF units and the
activations for ReLU units (T = 1): every metric applies to both, but values in counts and in
activations are on different scales (participation ratio and Moran's I are scale-free; the
variance and ``mean_count`` are not).
"""

from __future__ import annotations

import numpy as np
import torch

from tdsnn.analysis.maps import morans_i
from tdsnn.areas import AreaStack, area_spike_counts
from tdsnn.sheet import Sheet

__all__ = ["participation_ratio", "representation_metrics"]


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
    for the last area also ``morans_i`` of its mean-response map on its sheet (neighbours
    within the area's neighbourhood width)."""
    counts = area_spike_counts(model, images.split(batch_size))
    out = {}
    last = model.area_names[-1]
    for name, area_counts in counts.items():
        x = area_counts.flatten(1).double().numpy()  # [S, N]
        out[name] = {
            "participation_ratio": participation_ratio(x),
            "activation_variance": float(x.var(axis=0).mean()),
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
            out[name]["morans_i"] = float(value)
    return out
