"""The fused batch-norm apply (+ shortcut) + LIF op against its PyTorch composition
(``BatchNorm2d`` + add + the LIF): values, gradients (train and eval), running statistics,
opcheck, gradcheck, layouts, odd shapes, bad input and the dispatch; and (on a GPU) the CUDA
kernel against the composition."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from kernel_copies import channels_last_steps, copies_made
from torch import nn

from tdsnn.neurons import LIF, ATan
from tdsnn.ops.bn_lif import batch_statistics, bn_lif, bn_lif_kernel

SHAPE = (3, 2, 5, 4, 3)  # [T, B, C, H, W]


def _bn(channels: int, dtype: torch.dtype, training: bool, seed: int = 0, space: int = 2, **kw):
    """A batch norm over ``space`` spatial dimensions (BatchNorm2d for 2) with random affine
    parameters and running statistics."""
    gen = torch.Generator().manual_seed(seed)
    cls = (nn.BatchNorm1d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[space]
    bn = cls(channels, **kw).to(dtype)
    with torch.no_grad():
        if bn.affine:
            bn.weight.copy_(torch.rand(channels, generator=gen) * 1.5 + 0.5)
            bn.bias.copy_(torch.rand(channels, generator=gen) * 2 - 1)
        if bn.running_mean is not None:
            bn.running_mean.copy_(torch.rand(channels, generator=gen) - 0.5)
            bn.running_var.copy_(torch.rand(channels, generator=gen) + 0.5)
    return bn.train(training)


def _inputs(shape, dtype, shortcut: bool, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    y = (torch.randn(shape, generator=gen, dtype=dtype) * 2 + 0.5).requires_grad_()
    s = torch.randn(shape, generator=gen, dtype=dtype).requires_grad_() if shortcut else None
    return y, s


def _compare(y, s, bn, units, *, atol, membrane=True):
    """Run the kernel and the composition on copies of ``bn``; check outputs, gradients of y,
    weight, bias, shortcut, and the running statistics."""
    bn_ref = copy.deepcopy(bn)
    spikes, h = bn_lif_kernel(y, bn, units, s, membrane)
    ref = bn_lif(y, bn_ref, units, s, membrane, reference=True)
    ref_spikes, ref_h = ref if membrane else (ref, None)
    assert spikes.dtype == y.dtype and spikes.shape == y.shape
    assert torch.equal(spikes, ref_spikes)
    if membrane:
        torch.testing.assert_close(h, ref_h, atol=atol, rtol=0)
    else:
        assert h is None
    gen = torch.Generator().manual_seed(7)
    grad_s = torch.randn(y.shape, generator=gen, dtype=y.dtype)
    grad_h = torch.randn(y.shape, generator=gen, dtype=ref_spikes.dtype) if membrane else None
    rest = [s] if s is not None else []
    wanted = [y, *([bn.weight, bn.bias] if bn.affine else []), *rest]
    wanted_ref = [y, *([bn_ref.weight, bn_ref.bias] if bn.affine else []), *rest]

    def loss(out_s, out_h):
        return (out_s * grad_s).sum() + ((out_h * grad_h).sum() if membrane else 0)

    got = torch.autograd.grad(loss(spikes, h), wanted)
    expected = torch.autograd.grad(loss(ref_spikes, ref_h), wanted_ref)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=atol * 10, rtol=atol)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        if getattr(bn, name) is not None:
            torch.testing.assert_close(getattr(bn, name), getattr(bn_ref, name), atol=atol, rtol=0)


RESETS = [
    dict(v_reset=0.0),
    dict(v_reset=None),
    dict(v_reset=-0.5, detach_reset=True),
    dict(v_reset=0.0, decay_input=False, tau=3.0),
    dict(v_reset=None, decay_input=False, surrogate="sigmoid"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shortcut", [False, True])
@pytest.mark.parametrize("lif", RESETS)
def test_kernel_equals_composition(cpu_kernels, dtype, training, shortcut, lif):
    y, s = _inputs(SHAPE, dtype, shortcut)
    atol = 1e-5 if dtype == torch.float32 else 1e-12
    _compare(y, s, _bn(SHAPE[2], dtype, training), LIF(**lif), atol=atol)


@pytest.mark.parametrize("surrogate", ["piecewise-quadratic", "fast-sigmoid"])
def test_every_built_in_surrogate(cpu_kernels, surrogate):
    y, s = _inputs(SHAPE, torch.float64, True)
    _compare(y, s, _bn(SHAPE[2], torch.float64, True), LIF(surrogate=surrogate), atol=1e-12)


@pytest.mark.parametrize(
    "shape", [(1, 2, 3, 4, 4), (4, 3, 1, 2, 5), (2, 3, 7), (5, 1, 3, 1, 1), (2, 4, 3, 3, 1, 2)]
)
def test_odd_shapes_and_one_step(cpu_kernels, shape):
    y, s = _inputs(shape, torch.float64, True)
    _compare(y, s, _bn(shape[2], torch.float64, True, space=len(shape) - 3), LIF(), atol=1e-12)


def test_without_membrane_the_op_returns_none_and_stores_none(cpu_kernels):
    y, s = _inputs(SHAPE, torch.float64, False)
    _compare(y, s, _bn(SHAPE[2], torch.float64, True), LIF(), atol=1e-12, membrane=False)
    out = torch.ops.tdsnn.bn_lif_forward(
        y.detach(), *_stats(y), None, None, None, True, 2.0, 1.0, 0.0, False, True, False,
        "atan", 2.0, False,
    )  # fmt: skip
    assert out[1].numel() == 0


def test_batch_norm_without_affine_or_running_statistics(cpu_kernels):
    y, s = _inputs(SHAPE, torch.float64, True)
    _compare(y, s, _bn(SHAPE[2], torch.float64, True, affine=False), LIF(), atol=1e-12)
    no_running = _bn(SHAPE[2], torch.float64, False, track_running_stats=False)
    _compare(y, s, no_running, LIF(), atol=1e-12)  # eval without estimates: batch statistics


def test_running_statistics_follow_batch_norm(cpu_kernels):
    """Momentum, the cumulative average (momentum None) and the unbiased running variance."""
    for momentum in (0.1, 0.5, None):
        bn = _bn(SHAPE[2], torch.float64, True, momentum=momentum)
        bn_ref = copy.deepcopy(bn)
        for seed in range(3):
            y, _ = _inputs(SHAPE, torch.float64, False, seed=seed)
            batch_statistics(y, bn)
            bn_ref(y.flatten(0, 1))
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(bn, name), getattr(bn_ref, name))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        batch_statistics(torch.randn(1, 1, 3, 1, 1), _bn(3, torch.float32, True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batch_statistics_op_equals_var_mean(cpu_kernels, dtype):
    """``bn_lif_stats``: per-channel mean and biased variance over T, B and space, in every
    layout, also for a mean far from 0; bad input (opcheck: test_opcheck)."""
    t, b, c, h, w = SHAPE
    contiguous = torch.randn(SHAPE, dtype=dtype) * 3 + 100
    channels_last = contiguous.flatten(0, 1).contiguous(memory_format=torch.channels_last)
    strided = torch.randn(t, b, c, w, h, dtype=dtype).transpose(3, 4)
    for y in (contiguous, channels_last.unflatten(0, (t, b)), strided, contiguous[:, :, :, 0]):
        mean, var = torch.ops.tdsnn.bn_lif_stats(y)
        dims = [d for d in range(y.dim()) if d != 2]
        ref_var, ref_mean = torch.var_mean(y.double(), dim=dims, correction=0)
        torch.testing.assert_close(mean, ref_mean.to(dtype))
        torch.testing.assert_close(var, ref_var.to(dtype), rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match=r"y must be \[T, B, C, \*\]"):
        torch.ops.tdsnn.bn_lif_stats(torch.randn(3, 4))
    with pytest.raises(RuntimeError, match="y must be float16, bfloat16, float32 or float64"):
        torch.ops.tdsnn.bn_lif_stats(torch.ones(2, 2, 3, dtype=torch.int64))
    with pytest.raises(RuntimeError, match="no values per channel"):
        torch.ops.tdsnn.bn_lif_stats(torch.ones(0, 2, 3))


@pytest.mark.parametrize("training", [True, False])
def test_channels_last_runs_without_a_copy(cpu_kernels, training):
    t, b, c, h, w = SHAPE
    flat = torch.randn(t * b, c, h, w, dtype=torch.float64).to(memory_format=torch.channels_last)
    y = (flat * 2 + 0.5).unflatten(0, (t, b)).detach().requires_grad_()
    s = torch.randn(t * b, c, h, w, dtype=torch.float64).to(memory_format=torch.channels_last)
    s = s.unflatten(0, (t, b)).requires_grad_()
    spikes, _ = bn_lif_kernel(y, _bn(c, torch.float64, training), LIF(), s, False)
    assert spikes.stride() == y.stride()
    _compare(y, s, _bn(c, torch.float64, training), LIF(), atol=1e-12)
    _ops_run_channels_last_without_a_copy("cpu", training)
    stats, copies = copies_made(torch.ops.tdsnn.bn_lif_stats, channels_last_steps(y))
    assert copies == []
    torch.testing.assert_close(stats, torch.ops.tdsnn.bn_lif_stats(y.detach().contiguous()))


def _ops_run_channels_last_without_a_copy(device: str, training: bool) -> None:
    """Forward and backward ops on channels-last steps of y, the shortcut and the incoming
    gradients: no copy of them dispatched (only the per-channel sums are), outputs with y's
    strides and equal to the contiguous run; opcheck on the layout."""
    c = SHAPE[2]
    gen = torch.Generator(device).manual_seed(5)
    y, s, grad_s, grad_h = (
        torch.randn(SHAPE, generator=gen, dtype=torch.float64, device=device) for _ in range(4)
    )
    w = torch.rand(c, generator=gen, dtype=torch.float64, device=device) + 0.5
    b = torch.randn(c, generator=gen, dtype=torch.float64, device=device)
    last = [channels_last_steps(t) for t in (y, s, grad_s, grad_h)]
    assert not last[0].is_contiguous()
    forward, backward = torch.ops.tdsnn.bn_lif_forward, torch.ops.tdsnn.bn_lif_backward
    (spikes, h), copies = copies_made(forward, *_op_args(last[0], w, b, last[1], training))
    assert copies == [] and spikes.stride() == h.stride() == last[0].stride()
    ref_spikes, ref_h = forward(*_op_args(y, w, b, s, training))
    assert torch.equal(spikes, ref_spikes)
    torch.testing.assert_close(h, ref_h, atol=1e-12, rtol=0)
    mean, invstd = _stats(y)
    lif = (training, 2.0, 1.0, 0.0, False, True, False, "atan", 2.0)
    got, copies = copies_made(backward, last[2], last[3], last[0], mean, invstd, w, b, last[1],
                              *lif)  # fmt: skip
    assert all(math.prod(shape) <= 2 * c for shape in copies), copies
    assert got[0].stride() == got[3].stride() == last[0].stride()
    expected = backward(grad_s, grad_h, y, mean, invstd, w, b, s, *lif)
    for a, e in zip(got, expected, strict=True):
        torch.testing.assert_close(a, e, atol=1e-10, rtol=1e-10)
    inputs = [t.clone().requires_grad_() for t in (last[0], w, b, last[1])]
    torch.library.opcheck(forward.default, _op_args(*inputs, training))
    back = (last[2], last[3], last[0], mean, invstd, w, b, last[1], *lif)
    torch.library.opcheck(backward.default, back)


def test_non_contiguous_inputs(cpu_kernels):
    t, b, c, h, w = SHAPE
    base = torch.randn(t, b, c, w, h + 2, dtype=torch.float64) * 2 + 0.5
    y = base.transpose(3, 4)[:, :, :, 1:-1].detach().requires_grad_()  # not dense
    s = torch.randn(b, t, c, h, w, dtype=torch.float64).transpose(0, 1).requires_grad_()
    assert not y.is_contiguous() and not s.is_contiguous()
    _compare(y, s, _bn(c, torch.float64, True), LIF(), atol=1e-12)


def _stats(y):
    var, mean = torch.var_mean(y.detach(), dim=(0, 1, 3, 4), correction=0)
    return mean, torch.rsqrt(var + 1e-5)


def _op_args(y, weight, bias, shortcut, training, full_membrane=True, v_threshold=1.0):
    mean, invstd = _stats(y)
    return (y, mean, invstd, weight, bias, shortcut, training, 2.0, v_threshold, 0.0, False,
            True, False, "atan", 2.0, full_membrane)  # fmt: skip


@pytest.mark.parametrize("shortcut", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_bfloat16_backward_is_the_float32_ops_rounded(cpu_kernels, training, shortcut):
    """bfloat16 computes in float32, keeping dL/dz in float32 scratch, where float32 keeps it in
    an output (the shortcut's gradient, else grad_y in place): on bfloat16-exact inputs the
    bfloat16 gradients are the float32 op's rounded, to the bit."""
    gen = torch.Generator().manual_seed(3)
    y = (torch.randn(SHAPE, generator=gen) * 2 + 0.5).bfloat16().float()
    s = torch.randn(SHAPE, generator=gen).bfloat16().float() if shortcut else None
    grads = [torch.randn(SHAPE, generator=gen).bfloat16().float() for _ in range(2)]
    w = (torch.rand(SHAPE[2], generator=gen) + 0.5).bfloat16().float()
    b = torch.randn(SHAPE[2], generator=gen).bfloat16().float()
    mean, invstd = _stats(y)

    def backward(dtype):
        def cast(t):
            return None if t is None else t.to(dtype)

        return torch.ops.tdsnn.bn_lif_backward(
            cast(grads[0]), grads[1], cast(y), mean, invstd, w, b, cast(s), training, 2.0, 1.0,
            0.0, False, True, False, "atan", 2.0,
        )  # fmt: skip

    for half, full in zip(backward(torch.bfloat16), backward(torch.float32), strict=True):
        assert torch.equal(half, full.to(half.dtype))


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("training", [True, False])
def test_opcheck(cpu_kernels, dtype, training):
    c = SHAPE[2]
    y = torch.randn(SHAPE, dtype=dtype, requires_grad=True)
    s = torch.randn(SHAPE, dtype=dtype, requires_grad=True)
    w = torch.rand(c, dtype=dtype, requires_grad=True)
    b = torch.randn(c, dtype=dtype, requires_grad=True)
    for shortcut, full in ((s, True), (None, False)):
        args = _op_args(y, w, b, shortcut, training, full)
        torch.library.opcheck(torch.ops.tdsnn.bn_lif_forward.default, args)
    mean, invstd = _stats(y)
    grads = (torch.randn(SHAPE, dtype=dtype), torch.randn(SHAPE, dtype=dtype))
    back = (*grads, y.detach(), mean, invstd, w.detach(), b.detach(), s.detach(), training, 2.0,
            1.0, 0.0, False, True, False, "atan", 2.0)  # fmt: skip
    torch.library.opcheck(torch.ops.tdsnn.bn_lif_backward.default, back)
    torch.library.opcheck(torch.ops.tdsnn.bn_lif_stats.default, (y.detach(),))


@pytest.mark.parametrize("training", [True, False])
def test_gradcheck_float64(cpu_kernels, training):
    """Numerical gradients of the membrane H through batch norm (with the batch statistics in
    training), the affine parameters and the shortcut: a threshold no neuron reaches and a
    detached reset make H smooth, so finite differences see the analytic gradient."""
    shape, c = (2, 2, 3, 2, 2), 3
    gen = torch.Generator().manual_seed(3)
    y = torch.randn(shape, generator=gen, dtype=torch.float64, requires_grad=True)
    s = torch.randn(shape, generator=gen, dtype=torch.float64, requires_grad=True)
    w = (torch.rand(c, generator=gen, dtype=torch.float64) + 0.5).requires_grad_()
    b = torch.randn(c, generator=gen, dtype=torch.float64, requires_grad=True)
    fixed = _stats(y)

    def membrane(y, w, b, s):
        mean, invstd = _stats(y) if training else fixed
        return torch.ops.tdsnn.bn_lif_forward(
            y, mean, invstd, w, b, s, training, 2.0, 100.0, 0.0, False, True, True, "atan", 2.0,
            True,
        )[1]  # fmt: skip

    assert torch.autograd.gradcheck(membrane, (y, w, b, s))


def test_rejects_bad_input(cpu_kernels):
    forward = torch.ops.tdsnn.bn_lif_forward
    y = torch.randn(SHAPE)
    c = SHAPE[2]
    ones, zeros = torch.ones(c), torch.zeros(c)
    lif = (True, 2.0, 1.0, 0.0, False, True, False, "atan", 2.0, False)

    def call(y=y, mean=zeros, invstd=ones, weight=ones, bias=zeros, shortcut=None, lif=lif):
        return forward(y, mean, invstd, weight, bias, shortcut, *lif)

    cases = [
        (dict(y=y.int()), "y must be float16, bfloat16, float32 or float64"),
        (dict(y=torch.randn(3, 4)), r"y must be \[T, B, C, \*\]"),
        (dict(mean=torch.zeros(c + 1)), r"mean must have one value per channel of y \(5\)"),
        (dict(invstd=torch.ones(c, 1)), "invstd must have one value per channel"),
        (dict(weight=torch.ones(c - 1)), "weight must have one value per channel"),
        (dict(bias=torch.zeros(2 * c)), "bias must have one value per channel"),
        (dict(weight=ones.double()), "weight must be Float for Float y, got Double"),
        (dict(mean=zeros.half()), "mean must be Float for Float y, got Half"),
        (dict(shortcut=torch.randn(3, 2, 5, 4, 4)), "shortcut must have y's shape"),
        (dict(shortcut=y.double()), "shortcut must have y's dtype Float"),
        (dict(lif=(True, 0.5, *lif[2:])), "tau must be >= 1"),
        (dict(lif=(*lif[:7], "relu", *lif[8:])), "unknown surrogate 'relu'"),
    ]
    for kwargs, message in cases:
        with pytest.raises(RuntimeError, match=message):
            call(**kwargs)
    backward = torch.ops.tdsnn.bn_lif_backward
    with pytest.raises(RuntimeError, match="grad_spikes must have y's shape"):
        backward(torch.randn(3, 2, 5, 4, 4), None, y, zeros, ones, None, None, None, *lif[:-1])
    with pytest.raises(RuntimeError, match="grad_membrane must have y's shape"):
        backward(None, torch.randn(2, 5), y, zeros, ones, None, None, None, *lif[:-1])
    with pytest.raises(RuntimeError, match="invstd must have one value per channel"):
        backward(None, None, y, zeros, torch.ones(3), None, None, None, *lif[:-1])


def _spy_kernel(monkeypatch) -> list:
    import tdsnn.ops.bn_lif as module

    calls, real = [], module.bn_lif_kernel

    def spy(y, *args):
        calls.append(tuple(y.shape))
        return real(y, *args)

    monkeypatch.setattr(module, "bn_lif_kernel", spy)
    return calls


def test_dispatch_uses_the_kernel_for_lif_units_only(cpu_kernels, monkeypatch):
    calls = _spy_kernel(monkeypatch)
    y, s = _inputs(SHAPE, torch.float32, True)
    bn = _bn(SHAPE[2], torch.float32, True)
    monkeypatch.setenv("TDSNN_KERNELS", "auto")
    bn_lif(y, bn, LIF(), s).sum().backward()
    assert calls == [SHAPE]
    from tdsnn.areas import ReLUUnits

    relu = bn_lif(y, bn, ReLUUnits(), s)
    assert calls == [SHAPE] and relu.min() >= 0

    @dataclasses.dataclass(frozen=True)
    class Custom(ATan):  # a user's surrogate: only the PyTorch path computes it
        pass

    bn_lif(y, bn, LIF(surrogate=Custom()), s)
    assert calls == [SHAPE]
    monkeypatch.setenv("TDSNN_KERNELS", "reference")
    bn_lif(y, bn, LIF(), s)
    assert calls == [SHAPE]


# ----------------------------------------------------------------------------- CUDA


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shortcut", [False, True])
@pytest.mark.parametrize("lif", RESETS)
def test_cuda_kernel_equals_composition(kernels, dtype, training, shortcut, lif):
    y, s = _inputs(SHAPE, dtype, shortcut)
    y = y.detach().cuda().requires_grad_()
    s = s.detach().cuda().requires_grad_() if s is not None else None
    atol = 1e-5 if dtype == torch.float32 else 1e-12
    _compare(y, s, _bn(SHAPE[2], dtype, training).cuda(), LIF(**lif), atol=atol)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(1, 2, 3, 4, 4), (2, 3, 7), (4, 16, 64, 9, 9)])
def test_cuda_odd_shapes_and_channels_last(kernels, shape):
    y, s = _inputs(shape, torch.float32, True)
    y = y.detach().cuda().requires_grad_()
    s = s.detach().cuda().requires_grad_()
    bn = _bn(shape[2], torch.float32, True, space=len(shape) - 3).cuda()
    _compare(y, s, bn, LIF(), atol=1e-5)
    if len(shape) == 5:
        t, b = shape[:2]
        flat = y.detach().flatten(0, 1).contiguous(memory_format=torch.channels_last)
        y_cl = flat.unflatten(0, (t, b)).requires_grad_()
        _compare(y_cl, s, _bn(shape[2], torch.float32, True).cuda(), LIF(), atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("training", [True, False])
def test_cuda_channels_last_runs_without_a_copy(kernels, training):
    _ops_run_channels_last_without_a_copy("cuda", training)


@pytest.mark.gpu
@pytest.mark.parametrize("training", [True, False])
def test_opcheck_cuda(kernels, training):
    c = SHAPE[2]
    y = torch.randn(SHAPE, device="cuda", requires_grad=True)
    s = torch.randn(SHAPE, device="cuda", requires_grad=True)
    w = torch.rand(c, device="cuda", requires_grad=True)
    b = torch.randn(c, device="cuda", requires_grad=True)
    for shortcut, full in ((s, True), (None, False)):
        args = _op_args(y, w, b, shortcut, training, full)
        torch.library.opcheck(torch.ops.tdsnn.bn_lif_forward.default, args)


@pytest.mark.gpu
def test_cuda_rejects_parameters_on_another_device(kernels):
    y = torch.randn(SHAPE, device="cuda")
    c = SHAPE[2]
    with pytest.raises(RuntimeError, match="mean must be on y's device"):
        torch.ops.tdsnn.bn_lif_forward(
            y, torch.zeros(c), torch.ones(c, device="cuda"), None, None, None, True, 2.0, 1.0,
            0.0, False, True, False, "atan", 2.0, False,
        )  # fmt: skip


# ----------------------------------------------------------------------------- the area stack


def _stack(config_overrides: dict | None = None):
    from tdsnn.areas import AreaStack
    from tdsnn.model_config import ModelConfig

    torch.manual_seed(0)
    config = ModelConfig(area_stack="v1-v4-it", width=0.0625, blocks=2, v_threshold=0.3,
                         **(config_overrides or {}))  # fmt: skip
    return AreaStack(config, num_classes=4)


def _step(model, images):
    out = model(images, record_membrane=["IT"])
    loss = out.logits.square().sum() + out.membrane["IT"].mean()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    return out.logits.detach(), grads, buffers


@pytest.mark.parametrize("overrides", [{}, {"v_reset": None, "encoding": "rate"}])
def test_area_stack_fused_equals_composition(cpu_kernels, monkeypatch, overrides):
    """The stack with the fused op (every block's conv -> BN (+ shortcut) -> LIF) computes what
    the composition computes: logits, membrane, every gradient and running statistic, in
    training and evaluation; the state-dict keys are those of the composition."""
    _fused_stack_equals_composition(monkeypatch, overrides, "cpu")


@pytest.mark.gpu
def test_cuda_area_stack_fused_equals_composition(kernels, monkeypatch):
    _fused_stack_equals_composition(monkeypatch, {}, "cuda")


def _fused_stack_equals_composition(monkeypatch, overrides: dict, device: str) -> None:
    calls = _spy_kernel(monkeypatch)
    images = torch.rand(4, 3, 16, 16, device=device)
    fused, reference = _stack(overrides).to(device), _stack(overrides).to(device)
    assert list(fused.state_dict()) == list(reference.state_dict())
    for training in (True, False):
        fused.train(training), reference.train(training)
        monkeypatch.setenv("TDSNN_KERNELS", "auto")
        torch.manual_seed(1)
        got = _step(fused, images)
        monkeypatch.setenv("TDSNN_KERNELS", "reference")
        torch.manual_seed(1)
        expected = _step(reference, images)
        torch.testing.assert_close(got[0], expected[0], atol=1e-4, rtol=1e-4)
        for part in (1, 2):
            assert got[part].keys() == expected[part].keys()
            for name in got[part]:
                torch.testing.assert_close(
                    got[part][name], expected[part][name], atol=1e-4, rtol=1e-3, msg=name
                )
    assert len(calls) == 2 * 2 * 3 * 2  # 2 passes x 3 areas x 2 blocks x 2 LIF layers


def test_area_stack_runs_modules_one_by_one_under_hooks(cpu_kernels, monkeypatch):
    """A hook on a LIF layer (recorders, exporters) sees its call: the stack then runs the
    composition."""
    calls = _spy_kernel(monkeypatch)
    monkeypatch.setenv("TDSNN_KERNELS", "auto")
    model = _stack().eval()
    seen = []
    lif = model.areas["V4"].blocks[0].lif2
    handle = lif.register_forward_hook(lambda m, args, out: seen.append(out.shape))
    with torch.no_grad():
        model(torch.rand(2, 3, 16, 16))
    handle.remove()
    assert len(seen) == 1
    assert len(calls) == 3 * 2 * 2 - 1  # every other LIF layer still fused
