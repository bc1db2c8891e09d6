"""Topographic losses (DESIGN §8): STC (rate, synchrony, membrane), WS, AS, TDANN, TopoLoss.

Modules, in data-flow order: :mod:`~tdsnn.topo.features` (spike counts, unit gathering, weight
rows) → :mod:`~tdsnn.topo.similarity` (guarded Pearson, r_CCG, cosine; dense ``[K, n, n]`` and
pair-list ``[P]`` forms) → :mod:`~tdsnn.topo.losses` (alignment / local forms, named losses) →
:mod:`~tdsnn.topo.presets` (``TopoConfig``) → :mod:`~tdsnn.topo.apply` (one area's loss per step).

Pair sets: ``pairs [P, 2]`` long, or ``pairs=None`` = all pairs among the units given (a cluster),
or :func:`stc_loss_clusters` for ``K`` clusters at once.
"""

from tdsnn.topo.apply import channel_pairs, pair_set, topo_loss
from tdsnn.topo.features import flatten_units, gather_clusters, incoming_weights, spike_counts
from tdsnn.topo.losses import (
    FORMS,
    METRICS,
    STC_TERMS,
    alignment_form,
    as_loss,
    distance_kernel,
    local_form,
    masked_pearson,
    membrane_loss,
    rate_loss,
    stc_loss,
    stc_loss_clusters,
    synchrony_loss,
    toploss_loss,
    ws_loss,
)
from tdsnn.topo.presets import FEATURES, PAIR_KINDS, TOPO_PRESETS, TopoConfig
from tdsnn.topo.similarity import (
    ccg_dense,
    ccg_pairs,
    cosine_pairs,
    distance_pairs,
    euclidean_pairs,
    pair_dot,
    pearson_dense,
    pearson_pairs,
    sqeuclidean_pairs,
)

__all__ = [
    "FEATURES",
    "FORMS",
    "METRICS",
    "PAIR_KINDS",
    "STC_TERMS",
    "TOPO_PRESETS",
    "TopoConfig",
    "alignment_form",
    "as_loss",
    "ccg_dense",
    "ccg_pairs",
    "channel_pairs",
    "cosine_pairs",
    "distance_kernel",
    "distance_pairs",
    "euclidean_pairs",
    "flatten_units",
    "gather_clusters",
    "incoming_weights",
    "local_form",
    "masked_pearson",
    "membrane_loss",
    "pair_dot",
    "pair_set",
    "pearson_dense",
    "pearson_pairs",
    "rate_loss",
    "spike_counts",
    "sqeuclidean_pairs",
    "stc_loss",
    "stc_loss_clusters",
    "synchrony_loss",
    "topo_loss",
    "toploss_loss",
    "ws_loss",
]
