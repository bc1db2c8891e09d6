"""Topographic losses (DESIGN §8): the alignment and local forms and the named losses.

For a pair set ``P`` with distances ``d_ij`` (mm) and similarities ``s_ij``:

- **alignment form** (TDANN, TDSNN): ``L = ½ · (1 − Pearson_P(s_ij, k_ij))`` with
  ``k_ij = 1/(1 + d_ij)``; in ``[0, 1]``. If ``s`` (or ``k``) is constant over ``P`` the
  Pearson is defined as 0, so ``L = ½`` with zero gradient.
- **local form** (WS, AS, All-TNN): ``L = Σ_P w_ij·D_ij / Σ_P w_ij`` with ``D_ij = 1 − s_ij``
  (correlations) or, for WS and AS, a distance ``metric`` named as in ``scipy.spatial.distance``
  (:data:`METRICS`: ``euclidean``, ``sqeuclidean``, ``cosine``, ``correlation``); ``w_ij = 1``
  unless given.

Pair sets come in two shapes, with the same maths:

- a **pair list** ``pairs [P, 2]`` (radius pairs, grid neighbours) — per-pair similarities through
  :func:`~tdsnn.topo.similarity.pair_dot`, memory ``O(N·S + P)``;
- **all pairs of a cluster** — pass ``pairs=None`` (the units given *are* the cluster) or use
  :func:`stc_loss_clusters` for ``K`` clusters at once. Similarities are dense ``[K, n, n]``
  matrices from batched matmuls; the Pearson over pairs runs over the off-diagonal entries (each
  unordered pair twice, which leaves a Pearson or a mean unchanged).

STC for one area (TDSNN): ``α·L_rate + β·L_sync + γ·L_membrane`` with

- ``L_rate``: Pearson over the batch of spike counts ``n_i = Σ_t S_i(t) ∈ R^B``;
- ``L_sync``: r_CCG of the spike trains with lag window ``W`` (default ``⌊T/2⌋``);
- ``L_membrane``: Pearson over (batch, time) of the membrane traces ``v [T, B, N]``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from tdsnn.errors import ConfigError
from tdsnn.ops.pairs import pair_moments
from tdsnn.ops.tiles import PairTiles, check_pairs
from tdsnn.sheet import near_square, pair_distances
from tdsnn.topo.features import as_float, flatten_units, gather_clusters, spike_counts
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

__all__ = [
    "FORMS",
    "STC_TERMS",
    "METRICS",
    "distance_kernel",
    "masked_pearson",
    "alignment_form",
    "local_form",
    "rate_loss",
    "synchrony_loss",
    "membrane_loss",
    "as_loss",
    "ws_loss",
    "toploss_loss",
    "stc_loss",
    "stc_loss_clusters",
    "stc_loss_areas",
]

FORMS = ("alignment", "local")
STC_TERMS = ("rate", "synchrony", "membrane")


def distance_kernel(d: Tensor) -> Tensor:
    """``k = 1/(1 + d)``, ``d`` in mm."""
    return 1.0 / (1.0 + d)


def _check_form(form: str) -> None:
    if form not in FORMS:
        raise ConfigError(f"unknown loss form {form!r}; valid forms: {', '.join(FORMS)}")


# ----------------------------------------------------------------------------- forms


def _flat_threshold(dtype: torch.dtype) -> float:
    """Relative variance below which a similarity vector counts as constant (rounding noise)."""
    return (128.0 * torch.finfo(dtype).eps) ** 2


def masked_pearson(s: Tensor, k: Tensor, mask: Tensor | None = None) -> Tensor:
    """Pearson between ``s`` and ``k`` over the last dimension, counting only ``mask`` entries.

    Args:
        s, k: ``[..., L]`` (``k`` is treated as a constant, e.g. the distance kernel).
        mask: ``[..., L]`` bool or ``None`` (all entries).

    Returns:
        ``[...]``; 0 with zero gradient where ``s`` or ``k`` is constant over the masked entries
        (variance below ``(128·eps)²`` times the mean square, i.e. rounding noise).
    """
    m = torch.ones_like(s) if mask is None else mask.to(s.dtype)
    cnt = m.sum(-1, keepdim=True).clamp_min(1.0)
    sc = (s - (s * m).sum(-1, keepdim=True) / cnt) * m
    k = k.detach().to(s.dtype)
    kc = (k - (k * m).sum(-1, keepdim=True) / cnt) * m
    vs = sc.pow(2).sum(-1)
    vk = kc.pow(2).sum(-1)
    with torch.no_grad():
        thr = _flat_threshold(s.dtype)
        ok = (vs > thr * (s * s * m).sum(-1)) & (vk > thr * (k * k * m).sum(-1))
    return (sc * kc).sum(-1) * guarded_rsqrt(vs * vk, ok)


def alignment_form(s: Tensor, k: Tensor, mask: Tensor | None = None) -> Tensor:
    """``½ · (1 − Pearson(s, k))`` over the last dimension (``mask``: entries that count)."""
    return 0.5 * (1.0 - masked_pearson(s, k, mask))


def local_form(dissim: Tensor, weights: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
    """``Σ w·D / Σ w`` over the last dimension (``w = 1`` by default; ``mask``: what counts)."""
    w = torch.ones_like(dissim) if weights is None else weights.to(dissim).expand_as(dissim)
    if mask is not None:
        w = w * mask.to(dissim.dtype)
    return (w * dissim).sum(-1) / w.sum(-1).clamp_min(torch.finfo(dissim.dtype).tiny)


def _pearson_of_sums(
    s1: Tensor, s2: Tensor, dot: Tensor, cnt: Tensor, kss: Tensor, dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Pearson ``ρ = Σ kc·s / √(V_s·Σ kc²)`` from float64 sums over ``cnt`` entries:
    ``s1 = Σ s``, ``s2 = Σ s²``, ``dot = Σ kc·s`` (``kc`` centred), ``kss = Σ kc²``.

    ``V_s = s2 − cnt·mean²``; ``ρ`` is 0 (zero gradient) where ``s`` is flat (``V_s`` at most
    ``(128·eps)²·s2``, ``eps`` of ``dtype``) or ``kss = 0``. Returns ``(ρ, 1/√(V_s·kss), V_s,
    mean, ok)``, ``ok`` where ``ρ`` is defined.
    """
    mean = s1 / cnt
    vs = (s2 - cnt * mean * mean).clamp_min(0.0)
    ok = (vs > _flat_threshold(dtype) * s2) & (kss > 0)
    inv = guarded_rsqrt(vs * kss, ok)
    return dot * inv, inv, vs, mean, ok


class _DenseAlignment(torch.autograd.Function):
    """Per-cluster ``½(1 − Pearson(s, k))`` over the valid off-diagonal entries of ``s [K, n, n]``.

    Needs ``s`` exactly 0 on padded rows/columns (true for the guarded similarities) and
    ``kc``: the kernel centred over the valid off-diagonal entries and 0 elsewhere. Sums are
    accumulated in float64; the backward is one fused expression, ``n×n`` masks are never built.
    """

    @staticmethod
    def forward(ctx, s: Tensor, kc: Tensor, kss: Tensor, cnt: Tensor) -> Tensor:
        k_clusters = s.shape[0]
        f64 = torch.float64
        diag = s.diagonal(dim1=1, dim2=2)
        s1 = s.sum((1, 2), dtype=f64) - diag.sum(1, dtype=f64)
        s2 = s.pow(2).sum((1, 2), dtype=f64) - diag.pow(2).sum(1, dtype=f64)
        dot = torch.bmm(s.reshape(k_clusters, 1, -1), kc.reshape(k_clusters, -1, 1))
        dot = dot.reshape(k_clusters).to(f64)
        rho, inv, vs, mean, ok = _pearson_of_sums(s1, s2, dot, cnt, kss, s.dtype)
        ratio = torch.where(ok, rho / vs.clamp_min(torch.finfo(f64).tiny), 0.0)
        ctx.save_for_backward(s, kc, inv, ratio, mean)
        return (0.5 * (1.0 - rho)).to(s.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        s, kc, inv, ratio, mean = ctx.saved_tensors
        g = grad.to(torch.float64)
        # dρ/ds_ij = inv·kc_ij − (ρ/V_s)(s_ij − mean) on valid off-diagonal entries
        c_k = (-0.5 * g * inv).to(s.dtype)[:, None, None]
        c_s = (0.5 * g * ratio).to(s.dtype)[:, None, None]
        c_0 = (-0.5 * g * ratio * mean).to(s.dtype)[:, None, None]
        ds = kc * c_k
        ds.addcmul_(s, c_s.expand_as(s)).add_(c_0)
        # padded rows/columns: harmless (the similarity's factors are 0 there); diagonal: not a pair
        ds.diagonal(dim1=1, dim2=2).zero_()
        return ds, None, None, None


def _dense_kernel(positions: Tensor, valid: Tensor, dtype) -> tuple[Tensor, Tensor, Tensor]:
    """Centred kernel ``kc [K, n, n]``, ``Σ kc² [K]`` and pair counts ``[K]`` (float64).

    ``k = 1/(1 + d)`` from ``positions [K, n, 2]``; ``kc`` is centred over each cluster's valid
    off-diagonal entries and 0 on the diagonal and padding; ``Σ kc²`` is 0 where ``k`` is
    constant (then the Pearson is 0).
    """
    f64 = torch.float64
    with torch.no_grad():
        x, y = positions.to(dtype).unbind(-1)  # [K, n] each
        k = torch.hypot(x[:, :, None] - x[:, None, :], y[:, :, None] - y[:, None, :])
        k = k.add_(1.0).reciprocal_()  # 1/(1 + d)
        n_valid = valid.sum(1, dtype=f64)
        cnt = n_valid * (n_valid - 1.0)
        vf = valid.to(dtype)
        m = vf[:, :, None] * vf[:, None, :]  # [K, n, n]: 1 where both units are real
        k.mul_(m)
        k.diagonal(dim1=1, dim2=2).zero_()
        s1 = k.sum((1, 2), dtype=f64)
        s2 = k.pow(2).sum((1, 2), dtype=f64)
        kss = (s2 - s1 * s1 / cnt.clamp_min(1.0)).clamp_min(0.0)
        kss = torch.where(kss > _flat_threshold(dtype) * s2, kss, 0.0)
        kc = k.sub_((s1 / cnt.clamp_min(1.0)).to(dtype)[:, None, None]).mul_(m)
        kc.diagonal(dim1=1, dim2=2).zero_()
    return kc, kss, cnt


def _reduce_dense(sim: Tensor, dense: tuple[Tensor, Tensor, Tensor], form: str) -> Tensor:
    """Per-cluster loss ``[K]`` from ``sim [K, n, n]`` (0 on padding) and :func:`_dense_kernel`."""
    kc, kss, cnt = dense
    if form == "alignment":
        return _DenseAlignment.apply(sim, kc.to(sim.dtype), kss, cnt)
    off = sim.sum((1, 2)) - sim.diagonal(dim1=1, dim2=2).sum(1)
    return 1.0 - off / cnt.to(sim.dtype).clamp_min(1.0)


# ----------------------------------------------------------------------------- term machinery


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


def _pairs_form(
    a: Tensor,
    b: Tensor,
    scale: float,
    pairs: Tensor | PairTiles,
    count: int,
    kern: Tensor | None,
    form: str,
) -> Tensor:
    """The form over ``count`` pairs of ``s_ij = a_i·b_j / scale`` (rows ``a, b [N, M]``) from
    the moments of :func:`~tdsnn.ops.pairs.pair_moments` (no per-pair similarities).

    Alignment: ``½(1 − Σ kc·s / √(V_s·Σ kc²))`` with ``kc`` the centred ``kern`` and
    ``V_s = Σ s² − (Σ s)²/P`` (0 where ``s`` or ``kern`` is flat, as :func:`masked_pearson`);
    local: ``1 − Σ s / P``.
    """
    if form == "local":
        total = pair_moments(a, b, pairs)[0]
        return (1.0 - total / (scale * count) if count else total * 0.0).to(a.dtype)
    with torch.no_grad():
        k = kern.double()
        kc = k - k.mean() if count else k
        kss = kc.pow(2).sum()
        kss = torch.where(kss > _flat_threshold(a.dtype) * k.pow(2).sum(), kss, 0.0)
    m = pair_moments(a, b, pairs, kc.to(a.dtype))
    cnt = m.new_tensor(float(max(count, 1)))
    rho = _pearson_of_sums(m[0] / scale, m[1] / scale**2, m[2] / scale, cnt, kss, a.dtype)[0]
    return (0.5 * (1.0 - rho)).to(a.dtype)


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
        return _pairs_form(*rows, 1.0, plan, len(pair_list), kern, form)
    features = spike_counts(x) if term == "rate" else as_float(x).reshape(t * b, n)
    z = guarded_zscore(features, 0).t().contiguous()  # [N, S]; Pearson = z_i·z_j / S
    return _pairs_form(z, z, features.shape[0], plan, len(pair_list), kern, form)


def _stc_dense(xs, positions, clusters, alpha, beta, gamma, window, form) -> dict[str, Tensor]:
    """Batched all-pairs STC over ``K`` clusters; ``xs``: term → ``[T, B, N]`` features."""
    weights = {"rate": alpha, "synchrony": beta, "membrane": gamma}
    out: dict[str, Tensor] = {}
    dense = None
    gathered: dict[int, Tensor] = {}
    for term, x in xs.items():
        key = id(x)
        if key not in gathered:
            gathered[key], index, valid = gather_clusters(as_float(x), clusters)
            if dense is None:
                pos = positions.to(x.device)[index]  # [K, n, 2]
                dense = _dense_kernel(pos, valid, gathered[key].dtype)
        sim = _sim_dense(term, gathered[key], window)
        out[term] = _reduce_dense(sim, dense, form).mean()
    out["total"] = _weighted_total(out, weights)
    return out


def _weighted_total(terms: dict[str, Tensor], weights: dict[str, float]) -> Tensor:
    total = None
    for name, value in terms.items():
        part = weights[name] * value
        total = part if total is None else total + part
    return total


def _stc_inputs(spikes, v, alpha, beta, gamma, form) -> dict[str, Tensor]:
    _check_form(form)
    for name, val in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
        if not val >= 0:
            raise ConfigError(f"{name} must be >= 0, got {val!r}")
    spikes = flatten_units(spikes)
    xs: dict[str, Tensor] = {}
    if alpha:
        xs["rate"] = spikes
    if beta:
        xs["synchrony"] = spikes
    if gamma:
        if v is None:
            raise ConfigError("gamma > 0 needs the membrane traces: pass v=[T, B, N] (or 5-D)")
        v = flatten_units(v, "v")
        if v.shape != spikes.shape:
            raise ConfigError(
                f"v must have the shape of spikes {tuple(spikes.shape)}, got {tuple(v.shape)}"
            )
        xs["membrane"] = v
    return xs


# ----------------------------------------------------------------------------- public losses


def rate_loss(spikes: Tensor, positions: Tensor, pairs: Tensor | None = None) -> Tensor:
    """TDSNN rate term ``L_L = ½(1 − Pearson_P(r_ij, 1/(1+d_ij)))``.

    Args:
        spikes: ``[T, B, N]`` (or ``[T, B, C, H, W]``), {0,1} or real.
        positions: ``[N, 2]`` mm.
        pairs: ``[P, 2]`` long, or ``None`` for all pairs among the ``N`` units (dense
            ``N×N``: meant for a cluster, e.g. ``spikes[:, :, idx], positions[idx]``).

    Returns:
        scalar in ``[0, 1]``; ``r_ij`` is the Pearson over the batch of spike counts.
    """
    return stc_loss(spikes, positions, pairs, alpha=1.0, beta=0.0)["rate"]


def synchrony_loss(
    spikes: Tensor, positions: Tensor, pairs: Tensor | None = None, window: int | None = None
) -> Tensor:
    """TDSNN synchrony term ``L_S = ½(1 − Pearson_P(r_CCG,ij, 1/(1+d_ij)))``; ``[T, B, N]`` spikes.

    ``window``: CCG lag window ``W`` (default ``⌊T/2⌋``, clipped to ``T−1``). ``pairs=None``: all
    pairs (see :func:`rate_loss`).
    """
    return stc_loss(spikes, positions, pairs, alpha=0.0, beta=1.0, window=window)["synchrony"]


def membrane_loss(v: Tensor, positions: Tensor, pairs: Tensor | None = None) -> Tensor:
    """Alignment loss of the Pearson over (batch, time) of membrane traces ``v [T, B, N]``."""
    return stc_loss(v, positions, pairs, alpha=0.0, beta=0.0, gamma=1.0, v=v)["membrane"]


def stc_loss(
    spikes: Tensor,
    positions: Tensor,
    pairs: Tensor | PairTiles | None = None,
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    gamma: float = 0.0,
    v: Tensor | None = None,
    window: int | None = None,
    form: str = "alignment",
) -> dict[str, Tensor]:
    """STC loss of one area on one pair set: ``α·L_rate + β·L_sync + γ·L_membrane``.

    Args:
        spikes: ``[T, B, N]`` or ``[T, B, C, H, W]`` spike trains (or any real traces).
        positions: ``[N, 2]`` mm.
        pairs: ``[P, 2]`` long, their :class:`~tdsnn.ops.pairs.PairTiles` (the tiled CUDA
            kernels' plan), or ``None`` for all pairs among the ``N`` units (dense).
        alpha, beta, gamma: term weights (>= 0); terms with weight 0 are not computed.
        v: membrane traces shaped like ``spikes``; needed when ``gamma > 0``.
        window: CCG lag window (default ``⌊T/2⌋``).
        form: ``"alignment"`` (TDSNN) or ``"local"`` (mean of ``1 − s`` over the pairs).

    Returns:
        ``{"rate"?, "synchrony"?, "membrane"?, "total"}``: the unweighted terms that were
        computed and their weighted sum (a zero scalar when all weights are 0).
    """
    xs = _stc_inputs(spikes, v, alpha, beta, gamma, form)
    if not xs:
        return {"total": torch.zeros((), device=spikes.device)}
    n = next(iter(xs.values())).shape[-1]
    if positions.shape != (n, 2):
        raise ConfigError(f"positions must be [N, 2] = [{n}, 2], got {tuple(positions.shape)}")
    if pairs is None:
        clusters = [torch.arange(n)]
        return _stc_dense(xs, positions, clusters, alpha, beta, gamma, window, form)
    out = {term: _term_pairs(term, x, positions, pairs, window, form) for term, x in xs.items()}
    out["total"] = _weighted_total(out, {"rate": alpha, "synchrony": beta, "membrane": gamma})
    return out


def stc_loss_clusters(
    spikes: Tensor,
    positions: Tensor,
    clusters: list[Tensor] | tuple[Tensor, Tensor],
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    gamma: float = 0.0,
    v: Tensor | None = None,
    window: int | None = None,
    form: str = "alignment",
) -> dict[str, Tensor]:
    """STC over ``K`` clusters at once, all pairs inside each: mean over clusters of each term.

    The clusters (e.g. from :func:`tdsnn.sheet.sample_clusters`) are gathered once into a padded
    ``[T, B, K, n]`` tensor; every similarity is a batched ``[K, n, n]`` matmul, the
    per-cluster alignment runs on the off-diagonal valid entries. Equal to averaging
    ``stc_loss(spikes[:, :, c], positions[c])`` over the clusters ``c``.

    Args: as :func:`stc_loss`, with ``clusters``: list of long tensors of unit indices (≥ 2 each),
    or the padded ``(index [K, n], valid [K, n])`` of :func:`tdsnn.sheet.sample_cluster_index`.

    Returns:
        ``{"rate"?, "synchrony"?, "membrane"?, "total"}`` (cluster means; total weighted).
    """
    xs = _stc_inputs(spikes, v, alpha, beta, gamma, form)
    if not xs:
        return {"total": torch.zeros((), device=spikes.device)}
    n = next(iter(xs.values())).shape[-1]
    if positions.shape != (n, 2):
        raise ConfigError(f"positions must be [N, 2] = [{n}, 2], got {tuple(positions.shape)}")
    _check_clusters(clusters)
    return _stc_dense(xs, positions, clusters, alpha, beta, gamma, window, form)


def stc_loss_areas(
    spikes: Mapping[str, Tensor],
    positions: Mapping[str, Tensor],
    clusters: Mapping[str, tuple[Tensor, Tensor]],
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    gamma: float = 0.0,
    v: Mapping[str, Tensor] | None = None,
    window: int | None = None,
    form: str = "alignment",
    one_batch: bool | None = None,
) -> dict[str, dict[str, Tensor]]:
    """:func:`stc_loss_clusters` of several areas in one batch, with static shapes throughout.

    Each area's features are normalised once per unit (z-scores for the Pearson terms,
    ACG-normalised trains and their lag-smoothed copies for r_CCG; over all its units before
    gathering, or over the gathered units when the clusters hold fewer slots than the area has
    units); on CUDA the clusters of all areas, padded to the widest, share one batched Gram
    per term and one fused alignment reduction (:class:`_DenseAlignment`); on the CPU each area
    is its own batch (padding would add work there, not save launches). No value is read back to
    the host, so the computation can be captured in a CUDA graph. Equal, area by area, to
    ``stc_loss_clusters(spikes[a], positions[a], clusters[a], ...)``.

    Args:
        spikes: ``{area: [T, B, N_a] or [T, B, C, H, W]}``, one ``T`` and ``B`` for all areas.
        positions: ``{area: [N_a, 2]}`` mm.
        clusters: ``{area: (index [K_a, n_a] long, valid [K_a, n_a] bool)}``, the padded form of
            :func:`tdsnn.sheet.sample_cluster_index` / :meth:`tdsnn.sheet.ClusterBank.draw`
            (>= 2 valid units per row).
        alpha, beta, gamma, window, form: as :func:`stc_loss`.
        v: ``{area: membrane traces shaped like its spikes}`` (needed when ``gamma > 0``).
        one_batch: all areas in one batch (True) or each alone (False); None: by device.

    Returns:
        ``{area: {"rate"?, "synchrony"?, "membrane"?, "total"}}`` (cluster means per area).
    """
    v = v or {}
    xs = {a: _stc_inputs(spikes[a], v.get(a), alpha, beta, gamma, form) for a in spikes}
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
    weights = {"rate": alpha, "synchrony": beta, "membrane": gamma}
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
    dense = _dense_kernel(pos, ok, dtype)  # [ΣK, n, n]: one kernel for all terms
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
        losses = _reduce_dense(sim, dense, form).split(sizes)
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
    (:func:`tdsnn.topo.metrics.topography_score`) and swap-optimisation (:mod:`tdsnn.topo.swap`)
    call it, and the STC rate term (:func:`stc_loss_clusters`) is the same computation,
    ``pearson_dense`` → ``_dense_kernel`` → ``_DenseAlignment``, on clusters gathered once for
    all its terms.

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
    return _reduce_dense(sim, _dense_kernel(pos, valid, sim.dtype), "alignment")
