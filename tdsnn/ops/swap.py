"""The swap op: ``torch.ops.tdsnn.swap_window``, TDANN's swap proposals in one neighbourhood,
with its PyTorch/numpy reference and the one point that picks between them.

In a window of ``m`` slots, ``r [m, m]`` holds the Pearson correlations of the units sitting at
the slots (zero diagonal) and ``k [m, m]`` the slots' kernel ``1/(1 + d)`` (zero diagonal).
Proposal ``s`` swaps the units at slots ``a = a[s]`` and ``c = c[s]`` when

    delta = (k[a] - k[c]) · (r[c] - r[a]) + 2 k[a, c] r[a, c] > 0,

the change of ``Σ_ij r_ij k_ij`` / 2 the swap makes (the ``j = a, c`` terms of the dot product
are cancelled by the last term); an accepted swap exchanges rows and columns ``a, c`` of ``r``.
Each decision depends on the swaps before it, so the proposals run in order, ``O(m)`` each.

The compiled kernel (``cuda_kernels/swap_cpu.cpp``, CPU only) and the reference both compute
``delta`` in float64, but the kernel sums the dot product left to right where numpy's dot may
sum in another order: the two can decide differently only when ``delta`` is within rounding of
0 (a swap that changes the alignment by about ``1e-16`` of its size).

There is no autograd formula: the op is a discrete search, not differentiable.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from tdsnn import ops
from tdsnn.errors import ConfigError

__all__ = ["check_swap_inputs", "swap_window", "swap_window_reference"]


def check_swap_inputs(r: Tensor, k: Tensor, a: Tensor, c: Tensor) -> None:
    """A one-line ``ConfigError`` unless ``r, k`` are float64 ``[m, m]`` (``r`` contiguous) and
    ``a, c`` int64 ``[S]`` of distinct slots in ``[0, m)``, all on the CPU."""
    for name, t in (("r", r), ("k", k), ("a", a), ("c", c)):
        if t.device.type != "cpu":
            raise ConfigError(f"swap_window: {name} must be a CPU tensor, got {t.device}")
    if r.dim() != 2 or r.shape[0] != r.shape[1]:
        raise ConfigError(f"swap_window: r must be square [m, m], got {tuple(r.shape)}")
    if k.shape != r.shape:
        raise ConfigError(
            f"swap_window: k must have r's shape {tuple(r.shape)}, got {tuple(k.shape)}"
        )
    if r.dtype != torch.float64 or k.dtype != torch.float64:
        raise ConfigError(f"swap_window: r and k must be float64, got {r.dtype} and {k.dtype}")
    if not r.is_contiguous():
        raise ConfigError("swap_window: r must be contiguous (it is modified in place)")
    if a.dim() != 1 or c.dim() != 1 or a.shape != c.shape:
        raise ConfigError(
            f"swap_window: a and c must be 1-D of equal length, got {tuple(a.shape)} and "
            f"{tuple(c.shape)}"
        )
    if a.dtype != torch.int64 or c.dtype != torch.int64:
        raise ConfigError(f"swap_window: a and c must be int64, got {a.dtype} and {c.dtype}")
    m = r.shape[0]
    bad = (a < 0) | (a >= m) | (c < 0) | (c >= m) | (a == c)
    if bool(bad.any()):
        s = int(bad.nonzero()[0, 0])
        raise ConfigError(
            f"swap_window: proposal {s} is ({int(a[s])}, {int(c[s])}); a and c must be distinct "
            f"slots in [0, {m})"
        )


def swap_window_reference(r: Tensor, k: Tensor, a: Tensor, c: Tensor) -> Tensor:
    """The proposals ``(a[s], c[s])`` in order, on numpy views: ``r`` follows the accepted swaps
    in place; returns the permutation ``[m]`` int64 (``perm[i]``: the slot whose unit now sits
    at slot ``i``). Inputs as :func:`check_swap_inputs` requires (not checked here)."""
    rn, kn = r.numpy(), k.contiguous().numpy()
    perm = np.arange(r.shape[0], dtype=np.int64)
    for i, j in zip(a.tolist(), c.tolist(), strict=True):
        delta = float((kn[i] - kn[j]) @ (rn[j] - rn[i])) + 2.0 * kn[i, j] * rn[i, j]
        if delta > 0:
            rn[[i, j]] = rn[[j, i]]
            rn[:, [i, j]] = rn[:, [j, i]]
            perm[[i, j]] = perm[[j, i]]
    return torch.from_numpy(perm)


@torch.no_grad()
def swap_window(r: Tensor, k: Tensor, a: Tensor, c: Tensor) -> Tensor:
    """Run the swap proposals ``a, c [S]`` (int64) on the window ``r, k [m, m]`` (float64, CPU).

    ``r`` is modified in place (its rows and columns follow the accepted swaps). Returns the
    permutation ``[m]`` int64: ``perm[i]`` is the slot whose unit now sits at slot ``i``, so
    ``units[perm]`` are the window's units after the swaps. The one dispatch point of
    ``swap_window``: the compiled CPU kernel when :func:`tdsnn.ops.use_kernels` says so, else
    :func:`swap_window_reference`. Bad input is a one-line ``ConfigError``.
    """
    check_swap_inputs(r, k, a, c)
    if ops.use_kernels(r, "swap_window"):
        return torch.ops.tdsnn.swap_window(r, k, a, c)
    return swap_window_reference(r, k, a, c)
