"""Topographic losses (DESIGN §8): STC (rate, synchrony, membrane), WS, AS, TDANN, TopoLoss.

Modules, in data-flow order: :mod:`~tdsnn.topo.features` (spike counts, unit gathering, weight
rows) → :mod:`~tdsnn.topo.similarity` (guarded Pearson, r_CCG, cosine; dense ``[K, n, n]`` and
pair-list ``[P]`` forms) → :mod:`~tdsnn.topo.losses` (alignment / local forms, named losses) →
:mod:`~tdsnn.topo.presets` (``TopoConfig``) → :mod:`~tdsnn.topo.apply` (one area's loss per step).

Pair sets: ``pairs [P, 2]`` long, or ``pairs=None`` = all pairs among the units given (a cluster),
or :func:`stc_loss_clusters` for ``K`` clusters at once.

The names below are imported on first use, so that :class:`TopoConfig` (the configuration, in
:mod:`~tdsnn.topo.presets`) loads without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOME = {
    "channel_pairs": "apply",
    "pair_set": "apply",
    "topo_loss": "apply",
    "flatten_units": "features",
    "gather_clusters": "features",
    "incoming_weights": "features",
    "spike_counts": "features",
    "FORMS": "losses",
    "METRICS": "losses",
    "STC_TERMS": "losses",
    "alignment_form": "losses",
    "as_loss": "losses",
    "distance_kernel": "losses",
    "local_form": "losses",
    "masked_pearson": "losses",
    "membrane_loss": "losses",
    "rate_loss": "losses",
    "stc_loss": "losses",
    "stc_loss_clusters": "losses",
    "synchrony_loss": "losses",
    "toploss_loss": "losses",
    "ws_loss": "losses",
    "FEATURES": "presets",
    "PAIR_KINDS": "presets",
    "TOPO_PRESETS": "presets",
    "TopoConfig": "presets",
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
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
