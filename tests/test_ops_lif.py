"""The compiled LIF op: registration, dispatch policy, the CPU kernel against the PyTorch
reference (values, gradients, opcheck, layouts, bad input), and (on a GPU) the CUDA kernel
against the reference, opcheck, torch.compile and a CUDA run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
import warnings

import pytest
import torch
from kernel_copies import channels_last_steps, copies_made

from tdsnn import ops
from tdsnn.errors import ConfigError
from tdsnn.neurons import SURROGATES, get_surrogate, lif_multistep
from tdsnn.ops.lif import LIFMultiStep, LIFParams, lif_reference

SCHEMAS = {
    "lif_forward": "tdsnn::lif_forward(Tensor x, float tau, float v_threshold, float v_reset, "
    "bool soft_reset, bool decay_input, bool detach_reset, str surrogate, float alpha, "
    "bool full_membrane) -> (Tensor spikes, Tensor membrane)",
    "lif_backward": "tdsnn::lif_backward(Tensor? grad_spikes, Tensor? grad_membrane, "
    "Tensor membrane, float tau, float v_threshold, float v_reset, bool soft_reset, "
    "bool decay_input, bool detach_reset, str surrogate, float alpha, "
    "ScalarType grad_dtype) -> Tensor",
    "pair_similarity": "tdsnn::pair_similarity(Tensor x, Tensor y, Tensor pairs) -> Tensor",
    "pair_similarity_backward": "tdsnn::pair_similarity_backward(Tensor grad, Tensor x, "
    "Tensor y, Tensor pairs) -> (Tensor grad_x, Tensor grad_y)",
    "pair_ccg": "tdsnn::pair_ccg(Tensor spikes, Tensor pairs, int window) -> Tensor",
    "pair_ccg_backward": "tdsnn::pair_ccg_backward(Tensor grad, Tensor spikes, Tensor pairs, "
    "int window) -> Tensor",
}


def test_every_op_is_registered_with_its_schema(cpu_kernels):
    for name, schema in SCHEMAS.items():
        assert str(getattr(torch.ops.tdsnn, name).default._schema) == schema


def test_build_result_points_at_the_cache(kernels, tmp_path):
    assert kernels.library.is_file()
    assert kernels.library.parent.parent == ops.build.cache_dir() / "kernels"
    assert ops.loaded() and ops.loaded(cuda=False)


def _params(surrogate="atan", v_reset=0.0, decay_input=True, detach_reset=False, tau=2.0):
    return LIFParams(
        tau=tau,
        v_threshold=1.0,
        v_reset=v_reset,
        decay_input=decay_input,
        detach_reset=detach_reset,
        surrogate=get_surrogate(surrogate),
    )


def _op_inputs(x, p, full_membrane):
    from tdsnn.ops.lif import lif_op_args as _op_args

    return (x, *_op_args(p), full_membrane)


RESETS = [(0.0, True, False), (None, False, True), (-0.5, True, True), (None, True, False)]
GRID = [
    dict(surrogate=s, v_reset=v, decay_input=d, detach_reset=r)
    for s in SURROGATES
    for v, d, r in RESETS
]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("full_membrane", [False, True])
def test_opcheck_cpu(cpu_kernels, dtype, full_membrane):
    for kwargs in GRID[::3]:
        x = (torch.randn(4, 2, 5, dtype=dtype) * 2).requires_grad_()
        torch.library.opcheck(
            torch.ops.tdsnn.lif_forward.default, _op_inputs(x, _params(**kwargs), full_membrane)
        )


@pytest.mark.parametrize("kwargs", GRID)
def test_cpu_op_equals_reference(cpu_kernels, kwargs):
    p = _params(**kwargs)
    x = (torch.randn(6, 3, 7, dtype=torch.float64) * 2).requires_grad_()
    spikes, membrane = torch.ops.tdsnn.lif_forward(*_op_inputs(x, p, True))
    ref_s, ref_h = lif_reference(x, keep_membrane=True, **_reference_kwargs(p))
    g_s, g_h = torch.randn_like(spikes), torch.randn_like(membrane)
    grad = torch.autograd.grad((spikes * g_s).sum() + (membrane * g_h).sum(), x)[0]
    ref_grad = torch.autograd.grad((ref_s * g_s).sum() + (ref_h * g_h).sum(), x)[0]
    assert torch.equal(spikes, ref_s)
    torch.testing.assert_close(membrane, ref_h, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)


def _reference_kwargs(p: LIFParams) -> dict:
    return dict(
        tau=p.tau,
        v_threshold=p.v_threshold,
        v_reset=p.v_reset,
        decay_input=p.decay_input,
        detach_reset=p.detach_reset,
        surrogate=p.surrogate,
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_membrane_keeps_every_spike(cpu_kernels, dtype):
    # H - V_th is saved in the input precision, rounded to the side of 0 it was on.
    x = torch.rand(8, 4096, dtype=torch.float32).mul(3).to(dtype)
    spikes, membrane = torch.ops.tdsnn.lif_forward(*_op_inputs(x, _params(), False))
    assert membrane.dtype == dtype
    assert torch.equal(membrane >= 0, spikes.bool())
    _, full = LIFMultiStep.apply(x, _params(), True)
    above = full - 1.0
    assert ((membrane.float() - above).abs() <= 2**-7 * above.abs() + 1e-30).all()


@pytest.mark.slow
def test_opcheck_cpu_backward(cpu_kernels):
    from tdsnn.ops.lif import lif_op_args as _op_args

    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        membrane = torch.randn(5, 64, dtype=dtype)
        grad = torch.randn(5, 64, dtype=dtype)
        for kwargs in GRID[::2]:
            args = (grad, None, membrane, *_op_args(_params(**kwargs)), dtype)
            torch.library.opcheck(torch.ops.tdsnn.lif_backward.default, args)


def _runs_channels_last_without_a_copy(device: str) -> None:
    """Forward and backward ops on channels-last steps of ``x [T, B, C, H, W]``: no copy
    dispatched, outputs with x's strides and equal to the contiguous run; autograd and opcheck
    on the layout."""
    from tdsnn.ops.lif import lif_op_args as _op_args

    p = _params()
    x = torch.randn(3, 2, 4, 5, 6, device=device) * 2
    last = channels_last_steps(x)
    assert not last.is_contiguous()
    ref_s, ref_h = torch.ops.tdsnn.lif_forward(*_op_inputs(x, p, True))
    forward = torch.ops.tdsnn.lif_forward
    (s, h), copies = copies_made(forward, *_op_inputs(last, p, True))
    assert copies == []
    assert s.stride() == last.stride() and h.stride() == last.stride()
    assert torch.equal(s, ref_s) and torch.equal(h, ref_h)
    g_s, g_h = (channels_last_steps(torch.randn_like(x)) for _ in range(2))
    args = (*_op_args(p), x.dtype)
    ref_grad = torch.ops.tdsnn.lif_backward(g_s.contiguous(), g_h.contiguous(), ref_h, *args)
    grad, copies = copies_made(torch.ops.tdsnn.lif_backward, g_s, g_h, h, *args)
    assert copies == [] and grad.stride() == last.stride()
    torch.testing.assert_close(grad, ref_grad)
    last.requires_grad_()
    grad = torch.autograd.grad(forward(*_op_inputs(last, p, True))[1].sum(), last)[0]
    x.requires_grad_()
    ref = torch.autograd.grad(forward(*_op_inputs(x, p, True))[1].sum(), x)[0]
    torch.testing.assert_close(grad, ref)
    torch.library.opcheck(forward.default, _op_inputs(last, p, False))


@pytest.mark.slow
def test_cpu_kernel_runs_channels_last_without_a_copy(cpu_kernels):
    _runs_channels_last_without_a_copy("cpu")


@pytest.mark.slow
def test_cpu_kernel_copies_layouts_it_cannot_walk(cpu_kernels):
    p = _params()
    x = torch.randn(3, 4, 10) * 2
    batch_major = x.transpose(0, 1).contiguous().transpose(0, 1)  # dense, time not outermost
    for view in (batch_major, x[..., ::2]):
        (s, h), copies = copies_made(torch.ops.tdsnn.lif_forward, *_op_inputs(view, p, True))
        assert copies, "a layout the kernel cannot walk is copied (and the check sees it)"
        ref_s, ref_h = lif_reference(view, keep_membrane=True, **_reference_kwargs(p))
        assert s.is_contiguous() and torch.equal(s, ref_s)
        torch.testing.assert_close(h, ref_h)
        torch.library.opcheck(
            torch.ops.tdsnn.lif_forward.default, _op_inputs(view.clone().requires_grad_(), p, True)
        )


@pytest.mark.parametrize("shape", [(1, 7), (0, 5), (3, 0), (0,)])
def test_cpu_kernel_single_step_and_empty_inputs(cpu_kernels, shape):
    p = _params()
    x = (torch.randn(shape) * 2).requires_grad_()
    spikes, membrane = torch.ops.tdsnn.lif_forward(*_op_inputs(x, p, True))
    ref_s, ref_h = lif_reference(x, keep_membrane=True, **_reference_kwargs(p))
    assert torch.equal(spikes, ref_s) and torch.allclose(membrane, ref_h)
    (spikes.sum() + membrane.sum()).backward()
    assert x.grad.shape == x.shape


def test_cpu_kernel_rejects_bad_input(cpu_kernels):
    from tdsnn.ops.lif import lif_op_args as _op_args

    p = _params()
    forward = torch.ops.tdsnn.lif_forward
    with pytest.raises(RuntimeError, match="must be float16, bfloat16, float32 or float64"):
        forward(*_op_inputs(torch.ones(2, 3, dtype=torch.int32), p, False))
    with pytest.raises(RuntimeError, match="0-d tensor"):
        forward(*_op_inputs(torch.tensor(1.0), p, False))
    with pytest.raises(RuntimeError, match="tau must be >= 1"):
        forward(torch.ones(2, 3), 0.5, 1.0, 0.0, False, True, False, "atan", 2.0, False)
    with pytest.raises(RuntimeError, match="v_threshold must be > v_reset"):
        forward(torch.ones(2, 3), 2.0, 1.0, 1.5, False, True, False, "atan", 2.0, False)
    with pytest.raises(RuntimeError, match="unknown surrogate 'relu'"):
        forward(torch.ones(2, 3), 2.0, 1.0, 0.0, False, True, False, "relu", 2.0, False)
    with pytest.raises(RuntimeError, match="alpha must be > 0"):
        forward(torch.ones(2, 3), 2.0, 1.0, 0.0, False, True, False, "atan", 0.0, False)
    membrane, args = torch.randn(4, 6), _op_args(p)
    backward = torch.ops.tdsnn.lif_backward
    with pytest.raises(RuntimeError, match="grad_spikes must have the membrane's shape"):
        backward(torch.randn(4, 5), None, membrane, *args, torch.float32)
    with pytest.raises(RuntimeError, match="grad_membrane must have the membrane's shape"):
        backward(None, torch.randn(6, 4), membrane, *args, torch.float32)
    with pytest.raises(RuntimeError, match="BFloat16 membrane goes with BFloat16 gradients"):
        backward(None, None, membrane.bfloat16(), *args, torch.float32)
    with pytest.raises(RuntimeError, match="membrane must be float32/float64"):
        backward(None, None, membrane.int(), *args, torch.float32)


def _dispatch_uses_the_kernel(device: str, monkeypatch) -> None:
    """lif_multistep on ``device`` calls the compiled op under ``auto``, not under ``reference``."""
    import tdsnn.ops.lif as lif_ops

    calls = []
    real = lif_ops.lif_kernel

    def spy(*args):
        calls.append(args[0].shape)
        return real(*args)

    monkeypatch.setattr(lif_ops, "lif_kernel", spy)
    x = torch.randn(4, 10, device=device, requires_grad=True)
    monkeypatch.setenv("TDSNN_KERNELS", "auto")
    lif_multistep(x).sum().backward()
    assert calls == [x.shape]
    monkeypatch.setenv("TDSNN_KERNELS", "reference")
    lif_multistep(x).sum().backward()
    assert calls == [x.shape]


def test_cpu_dispatch_uses_the_kernel(cpu_kernels, monkeypatch):
    _dispatch_uses_the_kernel("cpu", monkeypatch)


def test_library_paths_follow_every_source_and_header(tmp_path, monkeypatch):
    from tdsnn.ops import build

    folder = tmp_path / "src"
    folder.mkdir()
    headers = ("lif_common.h", "bn_lif_common.h", "lif_math.h")
    for name in build.CPU_SOURCES + build.CUDA_SOURCES + headers:
        (folder / name).write_text(name)
    names = {False: build.CPU_SOURCES, True: build.CUDA_SOURCES}
    monkeypatch.setattr(build, "source_files", lambda cuda=False: [folder / n for n in names[cuda]])
    before = {cuda: build.library_path(cuda) for cuda in (False, True)}
    assert before[False].name == "tdsnn_ops.so" and "-cpu-" in before[False].parent.name
    assert before[True].name == "tdsnn_kernels.so" and "-sm" in before[True].parent.name
    for name, changes in (("lif_common.h", {False, True}), ("lif_math.h", {False, True}),
                          ("new.h", {False, True}), ("ops.cpp", {False, True}),
                          ("lif_cpu.cpp", {False}), ("pairs.cu", {True})):  # fmt: skip
        (folder / name).write_text(name + " edited")
        after = {cuda: build.library_path(cuda) for cuda in (False, True)}
        assert {cuda for cuda in after if after[cuda] != before[cuda]} == changes, name
        before = after


def test_policy_values_and_errors(monkeypatch):
    monkeypatch.setenv("TDSNN_KERNELS", "fast")
    with pytest.raises(ConfigError, match="TDSNN_KERNELS='fast'.*auto, cuda, reference"):
        ops.kernel_policy()
    monkeypatch.setenv("TDSNN_KERNELS", "reference")
    assert not ops.use_kernels(types.SimpleNamespace(device=torch.device("cuda")), "lif")
    assert not ops.use_kernels(torch.zeros(1), "lif")
    monkeypatch.delenv("TDSNN_KERNELS")
    assert ops.kernel_policy() == "auto"
    assert not ops.use_kernels(torch.zeros(1), "pair_similarity")  # no CPU kernel: reference


def _failing_build(monkeypatch):
    def fail(verbose=False, cuda=True):
        raise ops.KernelBuildError("nvcc exploded" if cuda else "no c++ compiler")

    monkeypatch.setattr(ops, "build_kernels", fail)
    monkeypatch.setattr(ops, "_state", {"cpu": None, "cuda": None, "warned": set()})


def test_auto_falls_back_once_with_a_warning(monkeypatch):
    _failing_build(monkeypatch)
    monkeypatch.setenv("TDSNN_KERNELS", "auto")
    cuda = types.SimpleNamespace(device=torch.device("cuda"))
    with pytest.warns(RuntimeWarning, match="reference ops on CUDA: nvcc exploded"):
        assert not ops.use_kernels(cuda, "lif")
    with pytest.warns(RuntimeWarning, match="reference ops on the CPU: no c.. compiler"):
        assert not ops.use_kernels(torch.zeros(1), "lif")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not ops.use_kernels(cuda, "lif")  # no second warning
        assert not ops.use_kernels(torch.zeros(1), "lif")
        assert torch.equal(lif_multistep(torch.full((2, 3), 3.0)), torch.ones(2, 3))


def test_explicit_cuda_policy_raises_when_the_build_fails(monkeypatch):
    _failing_build(monkeypatch)
    monkeypatch.setenv("TDSNN_KERNELS", "cuda")
    with pytest.raises(ops.KernelBuildError, match="nvcc exploded"):
        ops.use_kernels(types.SimpleNamespace(device=torch.device("cuda")), "lif")


@pytest.mark.slow
def test_info_build_kernels_reports_the_build(kernels):
    result = subprocess.run(
        [sys.executable, "-m", "tdsnn", "info", "--build-kernels", "--json"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert str(kernels.library) in info["kernel build"]
    cpu_library = ops.build.library_path(cuda=False)
    assert info["kernel cache"].startswith(
        f"CPU built: {cpu_library}; CUDA built: {kernels.library}"
    )
    assert info["lif_multistep on cpu"].startswith("CPU kernel")
    assert info["pair_ccg on cpu"].startswith("PyTorch reference")


@pytest.mark.slow
def test_info_build_kernels_fails_without_a_toolkit(tmp_path, fresh_cache):
    env = dict(os.environ, CUDA_HOME=str(tmp_path / "no-cuda"), TDSNN_CACHE=str(fresh_cache))
    result = subprocess.run(
        [sys.executable, "-m", "tdsnn", "info", "--build-kernels"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 1
    assert "kernel build failed" in result.stderr
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------------------- GPU


def _dyadic(shape, dtype, device, generator):
    # Multiples of 1/8 in [-2, 4): with tau in {2, 4} every step is exact in float32, so kernel
    # and reference must agree bit for bit.
    steps = torch.randint(-16, 32, shape, generator=generator, device=device)
    return (steps.to(torch.float32) / 8).to(dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("kwargs", GRID)
def test_cuda_kernel_matches_reference(kernels, dtype, kwargs):
    gen = torch.Generator("cuda").manual_seed(hash((str(dtype), str(kwargs))) % 2**31)
    cases = [(1, (3,), 2.0, True), (4, (5, 3, 8, 8), 4.0, False), (17, (1023,), 2.0, True),
             (8, (2, 4096), 2.0, False)]  # fmt: skip
    for steps, shape, tau, full in cases:
        p = _params(tau=tau, **kwargs)
        x = _dyadic((steps, *shape), dtype, "cuda", gen).requires_grad_()
        spikes, membrane = torch.ops.tdsnn.lif_forward(*_op_inputs(x, p, full))
        ref_s, ref_h = lif_reference(x.double(), keep_membrane=True, **_reference_kwargs(p))
        assert spikes.dtype == dtype
        assert torch.equal(spikes.double(), ref_s)
        if full or dtype in (torch.float32, torch.float64):
            torch.testing.assert_close(membrane.double(), ref_h, rtol=0, atol=0)
        g_s = torch.randn(spikes.shape, generator=gen, device="cuda").to(dtype)
        grad = torch.autograd.grad((spikes * g_s).sum(), x)[0]
        ref_grad = torch.autograd.grad((ref_s * g_s.double()).sum(), x)[0]
        assert grad.dtype == dtype
        tol = {torch.float64: 1e-12, torch.float32: 1e-5}.get(dtype, 2e-2)
        err = (grad.double() - ref_grad.double()).norm() / ref_grad.double().norm().clamp_min(1e-30)
        assert err <= tol, (steps, shape, err)


@pytest.mark.gpu
@pytest.mark.parametrize("surrogate", list(SURROGATES))
def test_cuda_kernel_random_inputs_and_membrane_gradient(kernels, surrogate):
    gen = torch.Generator("cuda").manual_seed(7)
    p = _params(surrogate=surrogate, tau=1.7, v_reset=0.2)
    base = torch.randn(16, 6, 300, generator=gen, device="cuda") * 2
    x = base.transpose(1, 2).requires_grad_()  # non-contiguous [T, 300, 6]
    spikes, membrane = lif_multistep(x, return_membrane=True, **_reference_kwargs(p))
    ref_s, ref_h = lif_reference(x, keep_membrane=True, **_reference_kwargs(p))
    mismatch = (spikes != ref_s).float().mean().item()
    assert mismatch <= 1e-3  # rounding at the threshold may flip a rare spike
    g_s, g_h = torch.randn_like(spikes), torch.randn_like(membrane)
    grad = torch.autograd.grad((spikes * g_s).sum() + (membrane * g_h).sum(), x)[0]
    if mismatch == 0:
        torch.testing.assert_close(membrane, ref_h, rtol=1e-5, atol=1e-5)
        ref_grad = torch.autograd.grad((ref_s * g_s).sum() + (ref_h * g_h).sum(), x)[0]
        torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
def test_cuda_dispatch_uses_the_kernel(kernels, monkeypatch):
    _dispatch_uses_the_kernel("cuda", monkeypatch)


@pytest.mark.gpu
def test_cuda_kernel_runs_channels_last_without_a_copy(kernels):
    _runs_channels_last_without_a_copy("cuda")


@pytest.mark.gpu
def test_cuda_empty_inputs(kernels):
    for shape in [(0, 5), (3, 0), (0,)]:
        x = torch.zeros(shape, device="cuda", requires_grad=True)
        spikes, membrane = torch.ops.tdsnn.lif_forward(*_op_inputs(x, _params(), True))
        assert spikes.shape == membrane.shape == x.shape
        spikes.sum().backward()
        assert x.grad.shape == x.shape


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_opcheck_cuda(kernels, dtype):
    for kwargs in GRID[::2]:
        for full in (False, True):
            x = (torch.randn(5, 3, 33, dtype=dtype, device="cuda") * 2).requires_grad_()
            torch.library.opcheck(
                torch.ops.tdsnn.lif_forward.default, _op_inputs(x, _params(**kwargs), full)
            )
    membrane = torch.randn(5, 64, device="cuda", dtype=dtype)
    grad = torch.randn(5, 64, device="cuda", dtype=dtype)
    from tdsnn.ops.lif import lif_op_args as _op_args

    for kwargs in GRID[::2]:
        args = (grad, None, membrane, *_op_args(_params(**kwargs)), dtype)
        torch.library.opcheck(torch.ops.tdsnn.lif_backward.default, args)


@pytest.mark.gpu
def test_compiled_training_step_matches_eager(kernels, tiny_config):
    from tdsnn.areas import AreaStack

    torch.manual_seed(0)
    model = AreaStack(tiny_config.model, num_classes=10).cuda()
    images = torch.rand(8, 3, 16, 16, device="cuda")
    labels = torch.randint(0, 10, (8,), device="cuda")

    def step(net):
        model.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(images).logits, labels)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    model.eval()  # batch-norm statistics stay fixed, so both steps see the same model
    eager_loss, eager_grads = step(model)
    compiled_loss, compiled_grads = step(torch.compile(model))
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-4, atol=1e-5)
    for a, b in zip(compiled_grads, eager_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.slow
def test_short_cuda_training_run_with_amp(kernels, tmp_path):
    # bf16 autocast sends bf16 currents into the kernel; the run must learn as the reference does.
    accuracy = {}
    for policy in ("cuda", "reference"):
        out = tmp_path / policy
        result = subprocess.run(
            [sys.executable, "-m", "tdsnn", "train", "--device", "cuda", "--amp", "--epochs", "2",
             "--train-size", "4096", "--test-size", "512", "--quiet", "--out", str(out)],
            capture_output=True, text=True, env=dict(os.environ, TDSNN_KERNELS=policy),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        accuracy[policy] = json.loads((out / "summary.json").read_text())["test_acc"]
    print(f"test accuracy after 128 steps with --amp: {accuracy}")
    assert accuracy["cuda"] > 0.15, accuracy  # chance is 0.10
    assert abs(accuracy["cuda"] - accuracy["reference"]) < 0.15, accuracy
