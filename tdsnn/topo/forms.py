"""The two forms of a topographic loss over a pair set (DESIGN §8), dense and from moments.

For pairs ``P`` with distances ``d_ij`` (mm) and similarities ``s_ij``:

- **alignment form** (TDANN, TDSNN): ``L = ½ · (1 − Pearson_P(s_ij, k_ij))`` with
  ``k_ij = 1/(1 + d_ij)`` (:func:`distance_kernel`); in ``[0, 1]``. If ``s`` (or ``k``) is
  constant over ``P`` the Pearson is defined as 0, so ``L = ½`` with zero gradient.
- **local form** (WS, AS, All-TNN): ``L = Σ_P w_ij·D_ij / Σ_P w_ij`` with ``D_ij = 1 − s_ij``
  or a distance; ``w_ij = 1`` unless given.

Three ways in, one arithmetic: :func:`alignment_form` / :func:`local_form` on per-pair values
``[..., P]``; :func:`reduce_dense` on all pairs of ``K`` clusters, similarities ``[K, n, n]``
with the kernel of :func:`dense_kernel`; :func:`reduce_moments` on a pair list from the moments
of :func:`~tdsnn.ops.pairs.pair_moments` (``Σs``, ``Σs²``, ``Σk·s``: no per-pair similarities).
Sums are taken in float64.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from tdsnn.errors import ConfigError
from tdsnn.ops.pairs import pair_moments
from tdsnn.ops.tiles import PairTiles
from tdsnn.topo.similarity import guarded_rsqrt

__all__ = [
    "FORMS",
    "check_form",
    "distance_kernel",
    "masked_pearson",
    "alignment_form",
    "local_form",
    "dense_kernel",
    "reduce_dense",
    "reduce_moments",
]

FORMS = ("alignment", "local")


def distance_kernel(d: Tensor) -> Tensor:
    """``k = 1/(1 + d)``, ``d`` in mm."""
    return 1.0 / (1.0 + d)


def check_form(form: str) -> None:
    """A form that is not one of :data:`FORMS` is a ConfigError listing them."""
    if form not in FORMS:
        raise ConfigError(f"unknown loss form {form!r}; valid forms: {', '.join(FORMS)}")


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


def dense_kernel(positions: Tensor, valid: Tensor, dtype) -> tuple[Tensor, Tensor, Tensor]:
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


def reduce_dense(sim: Tensor, dense: tuple[Tensor, Tensor, Tensor], form: str) -> Tensor:
    """Per-cluster loss ``[K]`` from ``sim [K, n, n]`` (0 on padding) and :func:`dense_kernel`."""
    kc, kss, cnt = dense
    if form == "alignment":
        return _DenseAlignment.apply(sim, kc.to(sim.dtype), kss, cnt)
    off = sim.sum((1, 2)) - sim.diagonal(dim1=1, dim2=2).sum(1)
    return 1.0 - off / cnt.to(sim.dtype).clamp_min(1.0)


def reduce_moments(
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
