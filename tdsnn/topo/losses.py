"""Topographic losses (DESIGN §8): the STC loss and the named losses WS, AS and TopoLoss.

STC for one area (TDSNN) is ``α·L_rate + β·L_sync + γ·L_membrane``, each term a form
(:mod:`~tdsnn.topo.forms`: alignment ``½(1 − Pearson_P(s_ij, 1/(1 + d_ij)))`` or local
``mean_P(1 − s_ij)``) of one similarity over a pair set ``P``:

- ``L_rate``: Pearson over the batch of spike counts ``n_i = Σ_t S_i(t) ∈ R^B``;
- ``L_sync``: r_CCG of the spike trains with lag window ``W`` (default ``⌊T/2⌋``);
- ``L_membrane``: Pearson over (batch, time) of the membrane traces ``v [T, B, N]``.

:func:`stc_loss` is its one entry; the weights come as a
:class:`~tdsnn.topo_config.TermWeights`. Pair sets come in two shapes, with the same maths:

- a **pair list** ``pairs [P, 2]`` (radius pairs, grid neighbours) or its tiles: the form from
  the pair moments of :func:`~tdsnn.ops.pairs.pair_moments`, memory ``O(N·S + P)``;
- **all pairs of clusters**: ``pairs=None`` (the units given *are* the cluster), ``K`` clusters
  as a list or padded ``(index, valid)``, or several areas' padded clusters at once.
  Similarities are dense ``[K, n, n]`` matrices from batched matmuls; the Pearson over pairs
  runs over the off-diagonal entries (each unordered pair twice, which leaves a Pearson or a
  mean unchanged).

:func:`rate_loss`, :func:`synchrony_loss` and :func:`membrane_loss` are its terms alone;
:func:`rate_alignment` is the per-cluster rate term on any responses (held-out score, swaps).
WS, AS (local form on a pair list) compare weight rows or spike-count vectors by a distance
``metric`` named as in ``scipy.spatial.distance`` (:data:`METRICS`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from tdsnn.errors import ConfigError
from tdsnn.ops.tiles import PairTiles, check_pairs
from tdsnn.sheet import near_square
from tdsnn.topo.features import as_float, flatten_units, gather_clusters, spike_counts
from tdsnn.topo.forms import (
    check_form,
    dense_kernel,
    distance_kernel,
    local_form,
    reduce_dense,
    reduce_moments,
)
from tdsnn.topo.pairs import pair_distances
from tdsnn.topo.similarity import (
    METRICS,
    ccg_dense,
    ccg_factors,
    ccg_smooth,
    distance_pairs,
    gram,
    guarded_normalize,
    guarded_rsqrt,
    guarded_zscore,
    pearson_dense,
)
from tdsnn.topo_config import TermWeights

__all__ = [
    "METRICS",
    "PairSet",
    "stc_loss",
    "rate_loss",
    "synchrony_loss",
    "membrane_loss",
    "rate_alignment",
    "as_loss",
    "ws_loss",
    "toploss_loss",
]

# a pair list, its tiles, all pairs (None), clusters, or clusters padded as (index, valid)
PairSet = Tensor | PairTiles | list[Tensor] | tuple[Tensor, Tensor] | None


# ----------------------------------------------------------------------------- STC


def stc_loss(
    spikes: Tensor | Mapping[str, Tensor],
    positions: Tensor | Mapping[str, Tensor],
    pairs: PairSet | Mapping[str, tuple[Tensor, Tensor]] = None,
    *,
    weights: TermWeights | None = None,
    v: Tensor | Mapping[str, Tensor] | None = None,
    window: int | None = None,
    form: str = "alignment",
    one_batch: bool | None = None,
) -> dict[str, Tensor] | dict[str, dict[str, Tensor]]:
    """STC loss ``α·L_rate + β·L_sync + γ·L_membrane`` of one area on one pair set, or of
    several areas on clusters at once.

    One area: ``pairs`` is a ``[P, 2]`` long pair list or its
    :class:`~tdsnn.ops.tiles.PairTiles` (the tiled CUDA kernels' plan); ``None`` for all pairs
    among the ``N`` units (dense ``N×N``: meant for a cluster); or ``K`` clusters, a list of
    long tensors of unit indices (>= 2 each) or the padded ``(index [K, n], valid [K, n])`` of
    :func:`~tdsnn.topo.pairs.sample_cluster_index`, each term then the mean over clusters of
    its loss on all pairs inside each (the clusters gathered once for all terms).

    Several areas: ``spikes``, ``positions``, ``pairs`` (padded clusters, e.g. from
    :meth:`~tdsnn.topo.pairs.ClusterBank.draw`) and ``v`` are mappings ``{area: ...}`` (one
    ``T`` and ``B`` for all). Each area's features are normalised once per unit (z-scores for
    the Pearson terms, ACG-normalised trains and their lag-smoothed copies for r_CCG; over all
    its units before gathering, or over the gathered units when the clusters hold fewer slots
    than the area has units); the clusters of all areas, padded to the widest, share one
    batched Gram per term and one fused alignment reduction (``one_batch``: by default on CUDA,
    where launches dominate; each area alone on the CPU, where padding would add work). No value
    is read back to the host, so this can be captured in a CUDA graph. Equal, area by area, to
    the one-area form on the same clusters (up to rounding).

    Args:
        spikes: ``[T, B, N]`` or ``[T, B, C, H, W]`` spike trains (or any real traces).
        positions: ``[N, 2]`` mm.
        pairs: the pair set (above).
        weights: the term weights (default ``TermWeights()``: α = β = 1, γ = 0); terms of
            weight 0 are not computed.
        v: membrane traces shaped like ``spikes``; needed when ``γ > 0``.
        window: CCG lag window (default ``⌊T/2⌋``).
        form: ``"alignment"`` (TDSNN) or ``"local"`` (mean of ``1 − s`` over the pairs).
        one_batch: several areas only: all in one batch (True) or each alone (False).

    Returns:
        ``{"rate"?, "synchrony"?, "membrane"?, "total"}``: the unweighted terms that were
        computed and their weighted sum (a zero scalar when all weights are 0); for several
        areas ``{area: that}``.
    """
    weights = TermWeights() if weights is None else weights
    if isinstance(spikes, Mapping):
        return _stc_areas(spikes, positions, pairs, weights, v or {}, window, form, one_batch)
    xs = _stc_inputs(spikes, v, weights, form)
    if not xs:
        return {"total": torch.zeros((), device=spikes.device)}
    n = next(iter(xs.values())).shape[-1]
    if positions.shape != (n, 2):
        raise ConfigError(f"positions must be [N, 2] = [{n}, 2], got {tuple(positions.shape)}")
    if pairs is None:
        out = _stc_dense(xs, positions, [torch.arange(n)], window, form)
    elif isinstance(pairs, (list, tuple)):
        _check_clusters(pairs)
        out = _stc_dense(xs, positions, pairs, window, form)
    else:
        out = {term: _term_pairs(term, x, positions, pairs, window, form) for term, x in xs.items()}
    out["total"] = _weighted_total(out, weights)
    return out


def rate_loss(spikes: Tensor, positions: Tensor, pairs: PairSet = None) -> Tensor:
    """TDSNN rate term ``L_L = ½(1 − Pearson_P(r_ij, 1/(1+d_ij)))``: :func:`stc_loss`'s ``rate``.

    Args:
        spikes: ``[T, B, N]`` (or ``[T, B, C, H, W]``), {0,1} or real.
        positions: ``[N, 2]`` mm.
        pairs: as :func:`stc_loss` (``None``: all pairs among the ``N`` units, e.g.
            ``spikes[:, :, idx], positions[idx]`` of one cluster).

    Returns:
        scalar in ``[0, 1]``; ``r_ij`` is the Pearson over the batch of spike counts.
    """
    return stc_loss(spikes, positions, pairs, weights=TermWeights(1.0, 0.0))["rate"]


def synchrony_loss(
    spikes: Tensor, positions: Tensor, pairs: PairSet = None, window: int | None = None
) -> Tensor:
    """TDSNN synchrony term ``L_S = ½(1 − Pearson_P(r_CCG,ij, 1/(1+d_ij)))``; ``[T, B, N]`` spikes.

    ``window``: CCG lag window ``W`` (default ``⌊T/2⌋``, clipped to ``T−1``). ``pairs=None``: all
    pairs (see :func:`rate_loss`).
    """
    weights = TermWeights(0.0, 1.0)
    return stc_loss(spikes, positions, pairs, weights=weights, window=window)["synchrony"]


def membrane_loss(v: Tensor, positions: Tensor, pairs: PairSet = None) -> Tensor:
    """Alignment loss of the Pearson over (batch, time) of membrane traces ``v [T, B, N]``."""
    weights = TermWeights(0.0, 0.0, 1.0)
    return stc_loss(v, positions, pairs, weights=weights, v=v)["membrane"]


def _stc_inputs(spikes, v, weights: TermWeights, form: str) -> dict[str, Tensor]:
    """``{term: [T, B, N] features}`` of the terms of non-zero weight: the spikes for rate and
    synchrony, ``v`` for membrane."""
    check_form(form)
    if not isinstance(weights, TermWeights):
        raise ConfigError(
            f"weights must be a tdsnn.topo.TermWeights(alpha, beta, gamma), got {weights!r}"
        )
    spikes = flatten_units(spikes)
    xs: dict[str, Tensor] = {}
    for term in weights.terms:
        if term != "membrane":
            xs[term] = spikes
            continue
        if v is None:
            raise ConfigError("gamma > 0 needs the membrane traces: pass v=[T, B, N] (or 5-D)")
        v = flatten_units(v, "v")
        if v.shape != spikes.shape:
            raise ConfigError(
                f"v must have the shape of spikes {tuple(spikes.shape)}, got {tuple(v.shape)}"
            )
        xs["membrane"] = v
    return xs


def _weighted_total(terms: dict[str, Tensor], weights: TermWeights) -> Tensor:
    """``Σ weight·term`` over the computed ``terms``, in their order."""
    total = None
    for name, value in terms.items():
        part = weights.terms[name] * value
        total = part if total is None else total + part
    return total


# ----------------------------------------------------------------------------- one area


def _sim_dense(term: str, x: Tensor, window: int | None) -> Tensor:
    """All-pairs similarity of one STC term per cluster; ``x [K, n, T, B]`` → ``[K, n, n]``."""
    if term == "rate":
        return pearson_dense(x.sum(2))
    if term == "synchrony":
        return ccg_dense(x, window)
    k, n = x.shape[:2]
    return pearson_dense(x.reshape(k, n, -1))


def _check_clusters(clusters: list[Tensor] | tuple[Tensor, Tensor]) -> None:
    """Every cluster of a list has >= 2 units (the padded pair form is checked when drawn)."""
    if not isinstance(clusters, tuple) and any(int(c.numel()) < 2 for c in clusters):
        raise ConfigError("every cluster needs at least 2 units")


def _pair_list(pairs: Tensor | PairTiles, n: int, device: torch.device) -> Tensor:
    """The ``[P, 2]`` list of ``pairs`` (or of their tiles), checked against ``n`` units."""
    if isinstance(pairs, PairTiles):
        if pairs.num_units != n:
            raise ConfigError(f"the pair tiles index {pairs.num_units} units, the area has {n}")
        pairs = pairs.pairs
    return check_pairs(pairs, n).to(device)


def _term_pairs(term, x, positions, pairs, window, form) -> Tensor:
    """One STC term on a pair list: the Pearson of spike counts (``rate``) or of the traces
    over (time, batch) (``membrane``), or r_CCG (``synchrony``), reduced by ``form``."""
    x = flatten_units(x)
    t, b, n = x.shape
    pair_list = _pair_list(pairs, n, x.device)
    plan = pairs if isinstance(pairs, PairTiles) else pair_list
    kern = None
    if form == "alignment":
        kern = distance_kernel(pair_distances(positions.to(x.device, torch.float64), pair_list))
    if term == "synchrony":  # r_ij = Σ_{t,b} (S_i/√ACG_i)·(U_j/√ACG_j)
        a, u = ccg_factors(x, window, 0)
        rows = a.reshape(t * b, n).t().contiguous(), u.reshape(t * b, n).t().contiguous()
        return reduce_moments(*rows, 1.0, plan, len(pair_list), kern, form)
    features = spike_counts(x) if term == "rate" else as_float(x).reshape(t * b, n)
    z = guarded_zscore(features, 0).t().contiguous()  # [N, S]; Pearson = z_i·z_j / S
    return reduce_moments(z, z, features.shape[0], plan, len(pair_list), kern, form)


def _stc_dense(xs, positions, clusters, window, form) -> dict[str, Tensor]:
    """Mean over ``K`` clusters of each term on all pairs inside each; ``xs``: term →
    ``[T, B, N]`` features, gathered once per distinct tensor."""
    out: dict[str, Tensor] = {}
    dense = None
    gathered: dict[int, Tensor] = {}
    for term, x in xs.items():
        key = id(x)
        if key not in gathered:
            gathered[key], index, valid = gather_clusters(as_float(x), clusters)
            if dense is None:
                pos = positions.to(x.device)[index]  # [K, n, 2]
                dense = dense_kernel(pos, valid, gathered[key].dtype)
        sim = _sim_dense(term, gathered[key], window)
        out[term] = reduce_dense(sim, dense, form).mean()
    return out


# ----------------------------------------------------------------------------- several areas


def _stc_areas(spikes, positions, clusters, weights, v, window, form, one_batch) -> dict:
    """:func:`stc_loss` of several areas: ``{area: terms}`` (see there)."""
    xs = {a: _stc_inputs(spikes[a], v.get(a), weights, form) for a in spikes}
    if not any(xs.values()):
        return {a: {"total": torch.zeros((), device=spikes[a].device)} for a in spikes}
    index, valid = _check_area_clusters(xs, positions, clusters)
    dtype = _common_dtype(x for terms in xs.values() for x in terms.values())
    out: dict[str, dict[str, Tensor]] = {a: {} for a in xs}
    for group in _batches(index, one_batch):
        group_xs = {a: xs[a] for a in group}
        losses = _batch_losses(group_xs, positions, index, valid, dtype, window, form)
        for area in group:
            out[area].update(losses[area])
    for terms in out.values():
        terms["total"] = _weighted_total(dict(terms), weights)
    return out


def _batches(index: dict[str, Tensor], one_batch: bool | None) -> list[list[str]]:
    """Areas whose clusters share one batched Gram: all of them on CUDA (launch-bound: one
    kernel per op for every area), each alone on the CPU (compute-bound: padding 30-unit V1
    clusters to the 200 units of IT's would double the ``n×n`` work)."""
    areas = list(index)
    if one_batch is None:
        one_batch = next(iter(index.values())).device.type == "cuda"
    if one_batch:
        return [areas]
    return [[area] for area in areas]


def _batch_losses(xs, positions, index, valid, dtype, window, form) -> dict[str, dict]:
    """``{area: {term: cluster mean}}`` of the areas of ``xs``, their clusters padded to the
    widest and batched: one kernel, then one Gram and one alignment reduction per term."""
    width = max(index[a].shape[1] for a in xs)
    pos = torch.cat([_pad_width(positions[a].to(index[a].device)[index[a]], width) for a in xs])
    ok = torch.cat([_pad_width(valid[a], width) for a in xs])
    dense = dense_kernel(pos, ok, dtype)  # [ΣK, n, n]: one kernel for all terms
    sizes = [index[a].shape[0] for a in xs]
    out: dict[str, dict[str, Tensor]] = {a: {} for a in xs}
    features = {a: {t: x.to(dtype) for t, x in terms.items()} for a, terms in xs.items()}
    gathered: dict[str, dict] = {a: {} for a in xs}  # spikes gathered once for rate and sync
    for term in next(iter(xs.values())):
        a_parts, b_parts = [], []
        for area, terms in features.items():
            x, idx, ok = terms[term], index[area], valid[area]
            a, b = _cluster_factors(term, x, idx, ok, window, gathered[area])  # [K_a, n_a, D]
            a_parts.append(_pad_width(a, width))
            if b is not None:
                b_parts.append(_pad_width(b, width))
        sim = gram(torch.cat(a_parts), torch.cat(b_parts) if b_parts else None)  # [ΣK, n, n]
        losses = reduce_dense(sim, dense, form).split(sizes)
        for area, loss in zip(xs, losses, strict=True):
            out[area][term] = loss.mean()
    return out


def _check_area_clusters(xs, positions, clusters) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Each area's ``(index, valid)``, checked and on its features' device."""
    index, valid = {}, {}
    for area, terms in xs.items():
        x = next(iter(terms.values()))
        n = x.shape[-1]
        if positions[area].shape != (n, 2):
            raise ConfigError(
                f"area {area!r}: positions must be [N, 2] = [{n}, 2], got "
                f"{tuple(positions[area].shape)}"
            )
        idx, ok = (t.to(x.device) for t in clusters[area])
        if idx.dim() != 2 or ok.shape != idx.shape or ok.dtype != torch.bool:
            raise ConfigError(
                f"area {area!r}: clusters must be (index [K, n] long, valid [K, n] bool), got "
                f"shapes {tuple(idx.shape)} and {tuple(ok.shape)} ({ok.dtype})"
            )
        index[area], valid[area] = idx.long(), ok
    return index, valid


def _pad_width(t: Tensor, width: int) -> Tensor:
    """``t [K, n, ...]`` padded with zeros (False) along ``n`` to ``width``."""
    extra = width - t.shape[1]
    if not extra:
        return t
    return torch.cat([t, t.new_zeros((t.shape[0], extra, *t.shape[2:]))], 1)


def _common_dtype(tensors) -> torch.dtype:
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, as_float(t).dtype)
    return dtype


def _cluster_factors(
    term: str, x: Tensor, index: Tensor, valid: Tensor, window: int | None, gathered: dict
) -> tuple[Tensor, Tensor | None]:
    """One area's factors ``(A, B or None = A)`` of ``term`` per cluster unit, ``[K, n, D]``: the
    term's similarity of units ``i, j`` of a cluster is ``Σ_d A[i, d]·B[j, d]``.

    Normalised once over the area's units, then gathered, when the clusters hold at least as
    many slots as the area has units (each unit's factors are computed once); else gathered,
    then normalised (less work for a few small clusters of a big area). Equal either way.
    ``gathered`` caches the gathered features of ``x`` for the other terms.
    """
    if index.numel() >= x.shape[-1]:
        a, b = _unit_factors(term, x, window, 0)  # [D, N]
        ga = gather_clusters(a, (index, valid))[0]
        return ga, None if b is None else gather_clusters(b, (index, valid))[0]
    if id(x) not in gathered:
        gathered[id(x)] = (x, gather_clusters(x, (index, valid))[0])  # [K, n, T, B], 0 padding
    return _unit_factors(term, gathered[id(x)][1], window, 2)


def _unit_factors(
    term: str, x: Tensor, window: int | None, time_dim: int
) -> tuple[Tensor, Tensor | None]:
    """Per-unit factors of one term from ``x`` with time at ``time_dim``, batch after it; the
    two sample dimensions are merged into one ``D`` (``[T, B, N] → [D, N]`` or
    ``[K, n, T, B] → [K, n, D]``).

    Rate: z-scores of the spike counts over the batch / √B; membrane: z-scores over
    (time, batch) / √(T·B); synchrony: ``S/√ACG`` and ``U/√ACG`` (:func:`ccg_smooth`). Constant
    units (silent, padding) get zeros.
    """
    x = as_float(x)
    t, b = x.shape[time_dim], x.shape[time_dim + 1]
    if term == "rate":
        return guarded_zscore(x.sum(time_dim), time_dim) * (1.0 / math.sqrt(b)), None
    if term == "membrane":
        flat = x.flatten(time_dim, time_dim + 1)
        return guarded_zscore(flat, time_dim) * (1.0 / math.sqrt(t * b)), None
    u = ccg_smooth(x, window, time_dim)
    inv = guarded_rsqrt((x * u).sum((time_dim, time_dim + 1), keepdim=True))
    return (x * inv).flatten(time_dim, time_dim + 1), (u * inv).flatten(time_dim, time_dim + 1)


# ----------------------------------------------------------------------------- named losses


def as_loss(
    spikes: Tensor,
    pairs: Tensor,
    *,
    metric: str = "correlation",
    pair_weights: Tensor | None = None,
) -> Tensor:
    """Activation Similarity (local form): mean over pairs of ``D(n_i, n_j)``.

    ``n_i ∈ R^B`` is unit ``i``'s spike counts over the batch (``spikes [T, B, N]`` or 5-D,
    counted over ``T``); ``D`` is ``metric`` (:data:`METRICS`, see
    :func:`~tdsnn.topo.similarity.distance_pairs`), by default ``correlation`` ``1 − Pearson``.
    ``pair_weights [P]`` optional ``w_ij``.
    """
    _check_metric(metric)
    x = flatten_units(spikes)
    pairs = check_pairs(pairs, x.shape[-1]).to(x.device)
    return local_form(distance_pairs(spike_counts(x).t(), pairs, metric), pair_weights)


def ws_loss(
    weights: Tensor,
    pairs: Tensor,
    *,
    metric: str = "sqeuclidean",
    pair_weights: Tensor | None = None,
) -> Tensor:
    """Weight Similarity (local form): mean over pairs of ``D(w_i, w_j)``, weight rows ``[N, F]``.

    ``D`` is ``metric`` (:data:`METRICS`, see :func:`~tdsnn.topo.similarity.distance_pairs`):
    ``sqeuclidean`` ``‖w_i − w_j‖²`` (the default), ``euclidean`` ``‖w_i − w_j‖₂`` (gradient 0 at
    zero distance), ``cosine`` ``1 − cos`` or ``correlation`` ``1 − Pearson`` (a zero / constant
    row has distance 1). Append a bias column yourself if wanted
    (:func:`tdsnn.topo.features.incoming_weights`).
    """
    _check_metric(metric)
    if weights.dim() != 2:
        raise ConfigError(f"weights must be [N, F], got shape {tuple(weights.shape)}")
    pairs = check_pairs(pairs, weights.shape[0]).to(weights.device)
    return local_form(distance_pairs(weights, pairs, metric), pair_weights)


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ConfigError(f"unknown distance metric {metric!r}; valid: {', '.join(METRICS)}")


def toploss_loss(
    weights: Tensor,
    grid_hw: tuple[int, int] | None = None,
    factor: float | tuple[float, float] = 3.0,
) -> Tensor:
    """TopoLoss: ``1 − mean_cells cos(G, blur(G))`` on the channel grid of incoming weights.

    ``weights [C, F]`` rows are laid row-major on the ``grid_hw`` grid (default
    ``near_square(C)``), giving ``F`` maps of ``rows×cols``; ``blur`` = bilinear downsampling to
    ``(⌊rows/f⌋, ⌊cols/f⌋)`` (at least 1) and bilinear upsampling back.
    """
    if weights.dim() != 2:
        raise ConfigError(f"weights must be [C, F], got shape {tuple(weights.shape)}")
    c, f = weights.shape
    rows, cols = near_square(c) if grid_hw is None else (int(grid_hw[0]), int(grid_hw[1]))
    if rows * cols != c:
        raise ConfigError(f"grid_hw {grid_hw!r} does not hold the {c} channels (rows·cols != C)")
    fh, fw = (factor, factor) if isinstance(factor, (int, float)) else factor
    if not (fh >= 1 and fw >= 1):
        raise ConfigError(f"toploss factor must be >= 1, got {factor!r}")
    g = as_float(weights).t().reshape(1, f, rows, cols)
    down = F.interpolate(g, size=(max(1, int(rows / fh)), max(1, int(cols / fw))), mode="bilinear")
    blur = F.interpolate(down, size=(rows, cols), mode="bilinear")
    cos = (guarded_normalize(g, 1) * guarded_normalize(blur, 1)).sum(1)
    return 1.0 - cos.mean()


def rate_alignment(responses: Tensor, positions: Tensor, clusters: list[Tensor]) -> Tensor:
    """Rate alignment loss of each neighbourhood: ``½(1 − Pearson_P(r_ij, 1/(1 + d_ij)))``.

    The one definition of neighbourhood rate alignment: the held-out topography score
    (:func:`tdsnn.topo.metrics.topography_score`) and swap-optimisation
    (:mod:`tdsnn.topo.positions`) call it, and the STC rate term of :func:`stc_loss` on clusters
    is the same computation, ``pearson_dense`` → ``dense_kernel`` → ``reduce_dense``, on
    clusters gathered once for all its terms.

    Args:
        responses: ``[S, N]`` responses of the ``N`` units to ``S`` samples (spike counts,
            rates); ``r_ij`` is their Pearson over the samples.
        positions: ``[N, 2]`` mm.
        clusters: ``K`` long tensors of unit indices (≥ 2 each); all pairs inside each count.

    Returns:
        ``[K]`` losses in ``[0, 1]``, differentiable in ``responses``.
    """
    _check_clusters(clusters)
    xg, index, valid = gather_clusters(as_float(responses), clusters)  # [K, n, S]
    pos = positions.to(responses.device)[index]  # [K, n, 2]
    sim = pearson_dense(xg)  # [K, n, n]
    return reduce_dense(sim, dense_kernel(pos, valid, sim.dtype), "alignment")
