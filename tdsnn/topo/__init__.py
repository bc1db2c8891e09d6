"""Topographic losses (DESIGN §8): STC (rate, synchrony, membrane), WS, AS, TDANN, TopoLoss.

Modules, in data-flow order: :mod:`~tdsnn.topo_config` (``TopoConfig``, ``TermWeights``;
torch-free) and :mod:`~tdsnn.topo.pairs` (pair lists, cluster sampling and banks, from the
sheets' positions) → :mod:`~tdsnn.topo.features` (spike counts, unit gathering, weight rows) →
:mod:`~tdsnn.topo.similarity` (guarded Pearson, r_CCG, cosine; dense ``[K, n, n]`` and pair-list
``[P]`` forms) → :mod:`~tdsnn.topo.forms` (alignment and local forms) →
:mod:`~tdsnn.topo.losses` (:func:`stc_loss`, the one STC entry; WS, AS, TopoLoss) →
:mod:`~tdsnn.topo.objective` (``TopoObjective``: per-area terms and their sum, per step).

Pair sets of :func:`stc_loss`: ``pairs [P, 2]`` long, ``pairs=None`` = all pairs among the units
given (a cluster), or ``K`` clusters (a list, or padded ``(index, valid)``).

The names below are imported on first use, so that :class:`TopoConfig` (the configuration, in
:mod:`~tdsnn.topo_config`) loads without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOME = {
    "flatten_units": "features",
    "gather_clusters": "features",
    "incoming_weights": "features",
    "spike_counts": "features",
    "FORMS": "forms",
    "alignment_form": "forms",
    "distance_kernel": "forms",
    "local_form": "forms",
    "masked_pearson": "forms",
    "METRICS": "losses",
    "as_loss": "losses",
    "membrane_loss": "losses",
    "rate_alignment": "losses",
    "rate_loss": "losses",
    "stc_loss": "losses",
    "synchrony_loss": "losses",
    "toploss_loss": "losses",
    "ws_loss": "losses",
    "TopoObjective": "objective",
    "channel_pairs": "pairs",
    "grid_neighbours": "pairs",
    "pair_set": "pairs",
    "FEATURES": "tdsnn.topo_config",
    "PAIR_KINDS": "tdsnn.topo_config",
    "STC_TERMS": "tdsnn.topo_config",
    "TOPO_PRESETS": "tdsnn.topo_config",
    "TermWeights": "tdsnn.topo_config",
    "TopoConfig": "tdsnn.topo_config",
    "ccg_dense": "similarity",
    "ccg_pairs": "similarity",
    "cosine_pairs": "similarity",
    "distance_pairs": "similarity",
    "euclidean_pairs": "similarity",
    "pair_dot": "similarity",
    "pearson_dense": "similarity",
    "pearson_pairs": "similarity",
    "sqeuclidean_pairs": "similarity",
}

__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    """``tdsnn.topo.X``: ``X`` from its module."""
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = home if "." in home else f"{__name__}.{home}"  # the config lives beside topo
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
