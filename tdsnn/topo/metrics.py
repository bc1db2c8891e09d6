"""Held-out topography measures of a trained area (no gradients): what ``summary.json`` reports.

- :func:`topography_score`: mean over sampled neighbourhoods of the Pearson, over the unit
  pairs inside each, of (response correlation across test images, 1/(1 + d)). It is
  1 − 2·(the STC rate loss, :func:`~tdsnn.topo.losses.rate_alignment`) on held-out images:
  > 0 when nearby units respond alike.
- :func:`neighbour_rate_correlation`: mean Pearson of the spatially summed spike counts of
  neighbouring channels on the ``near_square(C)`` channel grid (what AS optimises).
- :func:`neighbour_weight_cosine`: mean cosine of neighbouring channels' incoming weights on the
  same grid (what WS / TopoLoss optimise).
"""

from __future__ import annotations

import torch
from torch import Tensor

from tdsnn.sheet import Sheet
from tdsnn.topo.features import incoming_weights
from tdsnn.topo.losses import rate_alignment
from tdsnn.topo.pairs import channel_pairs, cluster_lists, sample_cluster_index
from tdsnn.topo.similarity import cosine_pairs, pearson_pairs

__all__ = [
    "SCORE_IMAGES",
    "area_topography",
    "topography_score",
    "neighbour_rate_correlation",
    "neighbour_weight_cosine",
]


SCORE_IMAGES = 512  # the first held-out test images behind summary.json's topography scores


@torch.no_grad()
def area_topography(
    counts: dict[str, Tensor], sheets: dict[str, Sheet], weights: dict[str, Tensor], seed: int
) -> dict[str, dict[str, float]]:
    """Per area: :func:`topography_score`, :func:`neighbour_rate_correlation` and
    :func:`neighbour_weight_cosine` (``summary.json``'s ``topography``).

    Args:
        counts: ``{area: [B, C, H, W]}`` spike counts (or rates) to B held-out images.
        sheets: ``{area: Sheet}``.
        weights: ``{area: incoming weights [C, ...]}`` of each area's output units.
        seed: seed of the neighbourhood draws.
    """
    return {
        name: {
            "topography_score": topography_score(area.flatten(1), sheets[name], seed=seed),
            "neighbour_rate_correlation": neighbour_rate_correlation(area),
            "neighbour_weight_cosine": neighbour_weight_cosine(weights[name]),
        }
        for name, area in counts.items()
    }


@torch.no_grad()
def topography_score(
    counts: Tensor, sheet: Sheet, *, num_clusters: int = 32, max_units: int = 500, seed: int = 0
) -> float:
    """Mean over neighbourhoods of Pearson(response correlation, 1/(1 + d)), in ``[-1, 1]``.

    Args:
        counts: ``[B, N]`` spike counts (or rates) of the area's N units to B held-out images.
        sheet: the area's sheet (positions in mm).
        num_clusters: neighbourhood windows (side = the area's neighbourhood width) to average.
        max_units: at most this many units per window (random subsample).
        seed: seed of the window draw, so that runs are scored on the same neighbourhoods.
    """
    generator = torch.Generator().manual_seed(seed)
    drawn = sample_cluster_index(sheet, num_clusters, max_units=max_units, generator=generator)
    clusters = cluster_lists(*drawn)
    losses = rate_alignment(counts.double(), sheet.positions.double(), clusters)
    return float(1.0 - 2.0 * losses.mean())


@torch.no_grad()
def neighbour_rate_correlation(spikes: Tensor) -> float:
    """Mean Pearson (over images) of channel-grid neighbours' spike counts.

    ``spikes``: ``[T, B, C, H, W]`` (or counts ``[B, C, H, W]``); counts are summed over
    time and space per channel.
    """
    counts = spikes.sum(0) if spikes.dim() == 5 else spikes
    per_channel = counts.flatten(2).sum(-1).double()  # [B, C]
    pairs = channel_pairs(per_channel.shape[1]).to(per_channel.device)
    return float(pearson_pairs(per_channel, pairs).mean())


@torch.no_grad()
def neighbour_weight_cosine(weight: Tensor) -> float:
    """Mean cosine of channel-grid neighbours' incoming weights (``weight [C, ...]``)."""
    w = incoming_weights(weight.detach()).double()
    pairs = channel_pairs(w.shape[0]).to(w.device)
    return float(cosine_pairs(w, pairs).mean())
