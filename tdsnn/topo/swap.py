"""TDANN's position pre-optimisation: swap units' positions to raise local response alignment.

Both the optimisation and its measure use the rate alignment of the STC loss
(:func:`~tdsnn.topo.losses.rate_alignment`): response correlations ``r_ij`` (Pearson over
stimuli, :func:`~tdsnn.topo.similarity.pearson_dense`) against ``k_ij = 1/(1 + d_ij)``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from tdsnn.errors import ConfigError
from tdsnn.sheet import Sheet, sample_clusters
from tdsnn.topo.losses import distance_kernel, rate_alignment
from tdsnn.topo.similarity import pearson_dense

__all__ = ["mean_rate_loss", "swap_optimize"]


@torch.no_grad()
def mean_rate_loss(responses: Tensor, sheet: Sheet, num_clusters: int = 64, seed: int = 0) -> float:
    """Rate alignment loss averaged over fixed random neighbourhoods (lower = more topographic).

    ``responses``: ``[B, N]`` responses of the sheet's units to ``B`` stimuli.
    """
    generator = torch.Generator().manual_seed(seed)
    clusters = sample_clusters(sheet, num_clusters, generator=generator)
    return float(rate_alignment(responses, sheet.positions, clusters).mean())


def _neighbourhood(responses: Tensor, slots: Tensor, units: Tensor) -> tuple[np.ndarray, ...]:
    """``r [m, m]`` (units' response Pearson) and ``k [m, m]`` (slots' kernel), 0 diagonals."""
    r = pearson_dense(responses[:, units].T.unsqueeze(0))[0].numpy().copy()
    d = torch.cdist(slots, slots, compute_mode="donot_use_mm_for_euclid_dist")
    k = distance_kernel(d).numpy()
    np.fill_diagonal(r, 0.0)
    np.fill_diagonal(k, 0.0)
    return r, k


def swap_optimize(
    sheet: Sheet,
    responses: Tensor,
    *,
    steps: int = 10_000,
    swaps_per_step: int = 500,
    window_mm: float | None = None,
    max_units: int = 500,
    generator: torch.Generator | None = None,
    stop: Callable[[], bool] | None = None,
) -> Sheet:
    """Permute a sheet's positions among its units so that neighbours respond alike.

    Each step draws a random square neighbourhood (side ``window_mm``, default the sheet's
    neighbourhood width; at most ``max_units`` units) and proposes ``swaps_per_step`` random
    swaps of two units' positions. A swap of ``a`` and ``b`` changes the neighbourhood's
    alignment loss ``½(1 − Pearson(r, k))`` only through ``Σ r_ij k_ij`` (means and variances
    over pairs are permutation-invariant), by ``Δ = Σ_{j≠a,b} (r_aj − r_bj)(k_bj − k_aj)``; it is
    accepted when ``Δ > 0``, i.e. when it lowers the loss. Swaps never move a position, so the
    set of positions is unchanged.

    Args:
        sheet: the starting sheet (e.g. ``retinotopic``).
        responses: ``[B, N]`` responses of the units (e.g. spike counts to sine gratings).
        steps: number of neighbourhoods (TDANN: 10,000–20,000).
        swaps_per_step: swap proposals per neighbourhood (TDANN: 500).
        window_mm, max_units: neighbourhood side (mm) and size cap.
        generator: ``torch.Generator`` for every random draw.
        stop: checked before each step; once it returns True, the positions reached so far
            are returned (a valid permutation, e.g. after Ctrl-C).

    Returns:
        a new :class:`Sheet` with permuted positions, same layout, ``optimized=True``.
    """
    n = sheet.num_units
    if responses.dim() != 2 or responses.shape[1] != n:
        raise ConfigError(
            f"responses must be [B, N] with N = {n} units of area {sheet.area!r}, got "
            f"{tuple(responses.shape)}"
        )
    if int(steps) != steps or steps < 0 or int(swaps_per_step) != swaps_per_step:
        raise ConfigError("steps and swaps_per_step must be non-negative integers")
    x = responses.detach().to("cpu", torch.float64)
    slots = sheet.positions.to(torch.float64)  # fixed slot positions
    slot_unit = torch.arange(n)  # unit sitting at each slot
    side = min(sheet.neighbourhood_mm if window_mm is None else float(window_mm), sheet.side_mm)
    for _ in range(int(steps)):
        if stop is not None and stop():
            break
        (idx,) = sample_clusters(sheet, 1, window_mm=side, max_units=max_units, generator=generator)
        m = idx.numel()
        units = slot_unit[idx].numpy().copy()
        r, k = _neighbourhood(x, slots[idx], torch.from_numpy(units))
        a_all = torch.randint(m, (int(swaps_per_step),), generator=generator).numpy()
        b_all = torch.randint(m - 1, (int(swaps_per_step),), generator=generator).numpy()
        b_all = b_all + (b_all >= a_all)
        for a, c in zip(a_all.tolist(), b_all.tolist(), strict=True):
            # slots fixed (k fixed); swapping the units at slots a and c swaps r's rows/cols
            delta = float((k[a] - k[c]) @ (r[c] - r[a])) + 2.0 * k[a, c] * r[a, c]
            if delta > 0:
                r[[a, c]] = r[[c, a]]
                r[:, [a, c]] = r[:, [c, a]]
                units[[a, c]] = units[[c, a]]
        slot_unit[idx] = torch.from_numpy(units)
    new_pos = torch.empty_like(slots)
    new_pos[slot_unit] = slots
    return Sheet(
        sheet.area,
        sheet.shape,
        sheet.side_mm,
        sheet.neighbourhood_mm,
        sheet.layout,
        new_pos.to(torch.float32),
        optimized=True,
    )
