"""The compiled pair ops: CPU op against the reference and opcheck (CI), and on a GPU the
kernels against the reference, opcheck, gradcheck and the similarity functions that use them."""

from __future__ import annotations

import pytest
import torch

from tdsnn import ops
from tdsnn.topo.similarity import (
    ccg_pairs,
    ccg_smooth,
    cosine_pairs,
    pair_dot,
    pearson_pairs,
    resolve_ccg_window,
)


def _pairs(n: int, p: int, generator, device="cpu") -> torch.Tensor:
    pairs = torch.randint(0, n, (p, 2), generator=generator).to(device)
    if p >= 4:
        pairs[0] = torch.tensor([1 % n, 1 % n])  # a unit with itself
        pairs[1] = pairs[2]  # a duplicate
    return pairs


def _raw_ccg_by_definition(spikes: torch.Tensor, pairs: torch.Tensor, window: int):
    """CCG(i, j) = Σ_τ 1/(B(T-|τ|)) Σ_b Σ_t S_i(t) S_j(t+τ), written out literally."""
    t_steps, batch, _ = spikes.shape
    out = []
    for i, j in pairs.tolist():
        total = 0.0
        for tau in range(-window, window + 1):
            for t in range(t_steps):
                if 0 <= t + tau < t_steps:
                    prod = spikes[t, :, i] * spikes[t + tau, :, j]
                    total += prod.sum().item() / (batch * (t_steps - abs(tau)))
        out.append(total)
    return torch.tensor(out, dtype=torch.float64)


def test_cpu_ops_equal_the_reference(kernels):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 13, dtype=torch.float64, generator=gen)
    y = torch.randn(40, 13, dtype=torch.float64, generator=gen)
    pairs = _pairs(40, 57, gen)
    expected = (x[pairs[:, 0]] * y[pairs[:, 1]]).sum(1)
    torch.testing.assert_close(torch.ops.tdsnn.pair_similarity(x, y, pairs), expected)
    spikes = (torch.rand(5, 3, 20, generator=gen) < 0.4).double()
    small = pairs[:12] % 20
    for window in (0, 2, 4):
        torch.testing.assert_close(
            torch.ops.tdsnn.pair_ccg(spikes, small, window),
            _raw_ccg_by_definition(spikes, small, window),
        )


def test_cpu_op_gradients_equal_autograd(kernels):
    gen = torch.Generator().manual_seed(1)
    spikes = torch.rand(4, 2, 9, dtype=torch.float64, generator=gen).requires_grad_()
    pairs = _pairs(9, 15, gen)
    weights = torch.randn(15, dtype=torch.float64, generator=gen)
    grad = torch.autograd.grad((torch.ops.tdsnn.pair_ccg(spikes, pairs, 2) * weights).sum(), spikes)
    s = spikes.reshape(8, 9).t()
    u = ccg_smooth(spikes, 2).reshape(8, 9).t()
    direct = ((s[pairs[:, 0]] * u[pairs[:, 1]]).sum(1) * weights).sum()
    torch.testing.assert_close(grad[0], torch.autograd.grad(direct, spikes)[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck_cpu(kernels, dtype):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(12, 7, dtype=dtype, generator=gen).requires_grad_()
    y = torch.randn(12, 7, dtype=dtype, generator=gen).requires_grad_()
    pairs = _pairs(12, 20, gen)
    torch.library.opcheck(torch.ops.tdsnn.pair_similarity.default, (x, y, pairs))
    torch.library.opcheck(torch.ops.tdsnn.pair_similarity.default, (x, y, pairs[:0]))
    spikes = (torch.rand(4, 3, 12, generator=gen) < 0.5).to(dtype).requires_grad_()
    torch.library.opcheck(torch.ops.tdsnn.pair_ccg.default, (spikes, pairs, 1))


# --------------------------------------------------------------------------------------- GPU


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,m,p", [(1, 1, 1), (50, 33, 200), (3000, 64, 20000), (20, 5, 0)])
def test_cuda_pair_similarity_matches_reference(kernels, monkeypatch, dtype, n, m, p):
    gen = torch.Generator().manual_seed(n + m + p)
    base = torch.randn(m, n, dtype=dtype, generator=gen).cuda()
    x = base.t().requires_grad_()  # non-contiguous rows
    y = torch.randn(n, m, dtype=dtype, generator=gen).cuda().requires_grad_()
    pairs = _pairs(n, p, gen, "cuda")
    w = torch.randn(p, dtype=dtype, generator=gen).cuda()
    out = torch.ops.tdsnn.pair_similarity(x, y, pairs)
    gx, gy = torch.autograd.grad((out * w).sum(), (x, y)) if p else (None, None)
    ref = (x.detach().double()[pairs[:, 0]] * y.detach().double()[pairs[:, 1]]).sum(1)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert out.dtype == dtype and out.shape == (p,)
    assert p == 0 or _rel_err(out, ref) <= tol
    if p:
        xd, yd = x.detach().double().requires_grad_(), y.detach().double().requires_grad_()
        ref_out = (xd[pairs[:, 0]] * yd[pairs[:, 1]]).sum(1)
        rgx, rgy = torch.autograd.grad((ref_out * w.double()).sum(), (xd, yd))
        assert _rel_err(gx, rgx) <= tol and _rel_err(gy, rgy) <= tol


@pytest.mark.gpu
@pytest.mark.parametrize("steps", [1, 4, 8])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_cuda_pair_ccg_matches_reference(kernels, steps, batch, dtype):
    gen = torch.Generator().manual_seed(steps * 10 + batch)
    n = 70
    spikes = (torch.rand(steps, batch, n, generator=gen) < 0.3).to(dtype).cuda()
    spikes.requires_grad_()
    pairs = _pairs(n, 300, gen, "cuda")
    w = torch.randn(300, generator=gen, dtype=torch.float64).cuda()
    for window in sorted({0, 1, steps - 1}):
        if window > steps - 1:
            continue
        out = torch.ops.tdsnn.pair_ccg(spikes, pairs, window)
        (grad,) = torch.autograd.grad((out.double() * w).sum(), spikes)
        cpu = spikes.detach().cpu().double().requires_grad_()
        ref = torch.ops.tdsnn.pair_ccg(cpu, pairs.cpu(), window)
        (ref_grad,) = torch.autograd.grad((ref * w.cpu()).sum(), cpu)
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        assert _rel_err(out.cpu(), ref) <= tol
        assert grad.dtype == dtype
        assert _rel_err(grad.cpu(), ref_grad) <= (tol if dtype != torch.bfloat16 else 1e-2)


@pytest.mark.gpu
def test_cuda_opcheck_and_gradcheck(kernels):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(30, 9, dtype=torch.float64, generator=gen).cuda().requires_grad_()
    y = torch.randn(30, 9, dtype=torch.float64, generator=gen).cuda().requires_grad_()
    pairs = _pairs(30, 80, gen, "cuda")
    torch.library.opcheck(torch.ops.tdsnn.pair_similarity.default, (x, y, pairs))
    torch.library.opcheck(torch.ops.tdsnn.pair_similarity.default, (x, y, pairs[:0]))
    assert torch.autograd.gradcheck(
        lambda a, b: torch.ops.tdsnn.pair_similarity(a, b, pairs), (x, y)
    )
    spikes = torch.rand(4, 2, 30, dtype=torch.float64, generator=gen).cuda().requires_grad_()
    for dtype in (torch.float32, torch.float64):
        torch.library.opcheck(torch.ops.tdsnn.pair_ccg.default, (spikes.to(dtype), pairs, 2))
    assert torch.autograd.gradcheck(lambda s: torch.ops.tdsnn.pair_ccg(s, pairs, 2), (spikes,))


@pytest.mark.gpu
def test_cuda_similarities_equal_the_reference_path(kernels, monkeypatch):
    gen = torch.Generator().manual_seed(6)
    n = 400
    feats = torch.randn(64, n, generator=gen).cuda()
    feats[:, 3] = 1.0  # a constant unit: correlation 0 and zero gradient
    spikes = (torch.rand(4, 16, n, generator=gen) < 0.2).float().cuda()
    spikes[:, :, 5] = 0  # a silent unit: zero ACG
    pairs = _pairs(n, 3000, gen, "cuda")
    pairs[3] = torch.tensor([3, 5])

    def run(policy):
        monkeypatch.setenv("TDSNN_KERNELS", policy)
        f = feats.clone().requires_grad_()
        s = spikes.clone().requires_grad_()
        out = [pearson_pairs(f, pairs), cosine_pairs(f.t(), pairs), ccg_pairs(s, pairs)]
        loss = sum((o * torch.linspace(-1, 1, o.numel(), device="cuda")).sum() for o in out)
        return out, torch.autograd.grad(loss, (f, s))

    kernel_out, kernel_grads = run("cuda")
    ref_out, ref_grads = run("reference")
    for a, b in zip(kernel_out + list(kernel_grads), ref_out + list(ref_grads), strict=True):
        assert torch.isfinite(a).all()
        assert _rel_err(a, b) <= 1e-4
    assert kernel_out[0][3] == 0 and kernel_out[2][3] == 0


@pytest.mark.gpu
def test_cuda_default_policy_uses_the_kernels(kernels, monkeypatch):
    monkeypatch.delenv("TDSNN_KERNELS", raising=False)
    assert ops.use_kernels(torch.zeros(1, device="cuda"))
    x = torch.randn(5, 3, device="cuda")
    pairs = torch.tensor([[0, 1], [2, 4]], device="cuda")
    torch.testing.assert_close(pair_dot(x, x, pairs), (x[[0, 2]] * x[[1, 4]]).sum(1))
    assert resolve_ccg_window(4, None) == 2
