"""TDANN's position pre-optimisation: swap units' positions to raise local response alignment.

Both the optimisation and its measure use the rate alignment of the STC loss
(:func:`~tdsnn.topo.losses.rate_alignment`): response correlations ``r_ij`` (Pearson over
stimuli, :func:`~tdsnn.topo.similarity.pearson_dense`) against ``k_ij = 1/(1 + d_ij)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from tdsnn.errors import ConfigError
from tdsnn.ops.swap import swap_window
from tdsnn.sheet import Sheet
from tdsnn.topo.forms import distance_kernel
from tdsnn.topo.losses import rate_alignment
from tdsnn.topo.pairs import cluster_lists, sample_cluster_index, window_side
from tdsnn.topo.similarity import pearson_dense

__all__ = ["mean_rate_loss", "swap_optimize"]


@torch.no_grad()
def mean_rate_loss(responses: Tensor, sheet: Sheet, num_clusters: int = 64, seed: int = 0) -> float:
    """Rate alignment loss averaged over fixed random neighbourhoods (lower = more topographic).

    ``responses``: ``[B, N]`` responses of the sheet's units to ``B`` stimuli.
    """
    generator = torch.Generator().manual_seed(seed)
    clusters = cluster_lists(*sample_cluster_index(sheet, num_clusters, generator=generator))
    return float(rate_alignment(responses, sheet.positions, clusters).mean())


def _neighbourhood(responses: Tensor, slots: Tensor, units: Tensor) -> tuple[Tensor, Tensor]:
    """``r [m, m]`` (units' response Pearson, contiguous) and ``k [m, m]`` (slots' kernel), both
    float64 with 0 diagonals, fresh tensors (the swaps modify ``r`` in place)."""
    r = pearson_dense(responses[:, units].T.unsqueeze(0))[0].contiguous()
    d = torch.cdist(slots, slots, compute_mode="donot_use_mm_for_euclid_dist")
    k = distance_kernel(d).contiguous()
    r.fill_diagonal_(0.0)
    k.fill_diagonal_(0.0)
    return r, k


@contextmanager
def _one_thread() -> Iterator[None]:
    """Torch's intra-op threads set to 1 inside, restored after. A window's tensors are small
    (``[m, m]``, m <= a few hundred): more threads only add synchronisation, and on a busy CPU
    each of a window's ~10 small ops can wait milliseconds for a thread to get a core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _swap_window(
    responses: Tensor,
    slots: Tensor,
    units: Tensor,
    proposals: int,
    generator: torch.Generator | None,
) -> Tensor:
    """The window's ``units [m]`` (at ``slots [m, 2]``) after ``proposals`` random swaps."""
    m = units.numel()
    r, k = _neighbourhood(responses, slots, units)
    a = torch.randint(m, (int(proposals),), generator=generator)
    c = torch.randint(m - 1, (int(proposals),), generator=generator)
    c = c + (c >= a)
    # slots fixed (k fixed); swapping the units at slots a and c swaps r's rows/cols
    return units[swap_window(r, k, a, c)]


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

    A window's proposals run in one call of :func:`tdsnn.ops.swap.swap_window` (the compiled
    CPU op, or its reference under ``TDSNN_KERNELS=reference``); both compute ``Δ`` in float64
    and make the same decisions except when ``Δ`` is within rounding of 0, so a generator seed
    gives the same permutation either way. The windows run with one torch thread (restored
    after).

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
    side = window_side(sheet, window_mm)
    with _one_thread():
        for _ in range(int(steps)):
            if stop is not None and stop():
                break
            (idx,) = cluster_lists(
                *sample_cluster_index(
                    sheet, 1, window_mm=side, max_units=max_units, generator=generator
                )
            )
            slot_unit[idx] = _swap_window(x, slots[idx], slot_unit[idx], swaps_per_step, generator)
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
