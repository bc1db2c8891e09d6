"""The swap op (``torch.ops.tdsnn.swap_window``): compiled CPU kernel against the reference,
its input checks and its dispatch, and ``swap_optimize`` on top of it."""

import pytest
import torch

import tdsnn.ops.swap as swap_ops
from tdsnn.errors import ConfigError
from tdsnn.ops.swap import swap_window, swap_window_reference
from tdsnn.sheet import build_sheet
from tdsnn.topo.positions import _neighbourhood, swap_optimize


def _window(m: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A fresh window of ``m`` slots as swap_optimize builds it: ``r, k [m, m]`` float64."""
    g = torch.Generator().manual_seed(seed)
    responses = torch.randn(24, m, generator=g, dtype=torch.float64)
    slots = torch.rand(m, 2, generator=g, dtype=torch.float64) * 5.0
    return _neighbourhood(responses, slots, torch.arange(m))


def _proposals(m: int, count: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` random proposals of distinct slots, drawn as swap_optimize draws them."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(m, (count,), generator=g)
    c = torch.randint(m - 1, (count,), generator=g)
    return a, c + (c >= a)


def _objective(r: torch.Tensor, k: torch.Tensor) -> float:
    return float((r * k).sum())


@pytest.mark.parametrize(("m", "count"), [(2, 50), (3, 40), (17, 500), (64, 500), (201, 500)])
def test_kernel_matches_reference_and_follows_the_permutation(cpu_kernels, m, count):
    r0, k = _window(m, seed=m)
    a, c = _proposals(m, count, seed=m + 1)
    r_kernel, r_ref = r0.clone(), r0.clone()
    perm_kernel = torch.ops.tdsnn.swap_window(r_kernel, k, a, c)
    perm_ref = swap_window_reference(r_ref, k, a, c)
    assert perm_kernel.dtype == torch.int64 and perm_kernel.shape == (m,)
    assert torch.equal(perm_kernel, perm_ref)
    assert torch.equal(r_kernel, r_ref)
    # r in place follows the permutation of the slots' units; accepted swaps only raise Σ r·k
    assert torch.equal(r_kernel, r0[perm_kernel][:, perm_kernel])
    assert torch.equal(perm_kernel.sort().values, torch.arange(m))
    assert _objective(r_kernel, k) >= _objective(r0, k)
    if m >= 17:
        assert not torch.equal(perm_kernel, torch.arange(m))  # some swaps were accepted


def test_two_slots_never_swap(cpu_kernels):
    r, k = _window(2)
    a, c = _proposals(2, 20)
    assert torch.equal(swap_window(r, k, a, c), torch.arange(2))  # delta is exactly 0


@pytest.mark.parametrize("count", [0, 1])
def test_no_or_one_proposal(cpu_kernels, count):
    r0, k = _window(9)
    a, c = _proposals(9, count)
    r_kernel, r_ref = r0.clone(), r0.clone()
    perm = torch.ops.tdsnn.swap_window(r_kernel, k, a, c)
    assert torch.equal(perm, swap_window_reference(r_ref, k, a, c))
    assert torch.equal(r_kernel, r_ref)
    if count == 0:
        assert torch.equal(perm, torch.arange(9)) and torch.equal(r_kernel, r0)


def test_one_swap_is_accepted_exactly_when_it_raises_the_alignment(cpu_kernels):
    r0, k = _window(12, seed=5)
    accepted = 0
    for a in range(12):
        for c in range(12):
            if a == c:
                continue
            r = r0.clone()
            perm = swap_window(r, k, torch.tensor([a]), torch.tensor([c]))
            order = torch.arange(12)
            order[[a, c]] = order[[c, a]]
            gain = _objective(r0[order][:, order], k) - _objective(r0, k)
            assert abs(gain) > 1e-9  # no tie within rounding in this window
            assert torch.equal(perm, order if gain > 0 else torch.arange(12)), (a, c)
            accepted += gain > 0
    assert 0 < accepted < 132


def _bad(kind: str):
    r, k = _window(5)
    a, c = torch.tensor([0, 1]), torch.tensor([2, 3])
    changes = {
        "r float32": ({"r": r.float()}, "r and k must be float64"),
        "k float32": ({"k": k.float()}, "r and k must be float64"),
        "r not square": ({"r": r[:, :4].contiguous()}, r"r must be square \[m, m\]"),
        "k shape": ({"k": k[:4, :4]}, "k must have r's shape"),
        "r strided": ({"r": r.t()}, "r must be contiguous"),
        "a 2-D": ({"a": a[None]}, "a and c must be 1-D of equal length"),
        "lengths": ({"c": c[:1]}, "a and c must be 1-D of equal length"),
        "int32": ({"a": a.int()}, "a and c must be int64"),
        "a out of range": ({"a": torch.tensor([0, 5])}, r"proposal 1 is \(5, 3\)"),
        "c negative": ({"c": torch.tensor([-1, 3])}, r"proposal 0 is \(0, -1\)"),
        "a == c": (
            {"c": torch.tensor([2, 1])},
            r"proposal 1 is \(1, 1\).*distinct slots in \[0, 5\)",
        ),
    }
    args, pattern = changes[kind]
    return {"r": r, "k": k, "a": a, "c": c, **args}, pattern


BAD = [
    "r float32", "k float32", "r not square", "k shape", "r strided", "a 2-D", "lengths",
    "int32", "a out of range", "c negative", "a == c",
]  # fmt: skip


@pytest.mark.parametrize("policy", ["auto", "reference"])
@pytest.mark.parametrize("kind", BAD)
def test_bad_input_is_a_one_line_config_error(cpu_kernels, monkeypatch, policy, kind):
    monkeypatch.setenv("TDSNN_KERNELS", policy)
    args, pattern = _bad(kind)
    with pytest.raises(ConfigError, match=f"^swap_window: .*{pattern}") as info:
        swap_window(**args)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kind", ["a out of range", "c negative", "a == c", "k shape"])
def test_the_compiled_op_checks_its_bounds_too(cpu_kernels, kind):
    args, _ = _bad(kind)
    with pytest.raises(RuntimeError, match="swap_window: "):
        torch.ops.tdsnn.swap_window(**args)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_a_cuda_tensor_is_a_config_error():
    r, k = _window(4)
    a, c = _proposals(4, 3)
    with pytest.raises(ConfigError, match="^swap_window: r must be a CPU tensor"):
        swap_window(r.cuda(), k, a, c)


def test_dispatch_follows_the_kernel_policy(cpu_kernels, monkeypatch):
    calls = []
    real = swap_ops.swap_window_reference

    def spy(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(swap_ops, "swap_window_reference", spy)
    r0, k = _window(30)
    a, c = _proposals(30, 200)
    monkeypatch.setenv("TDSNN_KERNELS", "auto")
    r_auto = r0.clone()
    perm_auto = swap_window(r_auto, k, a, c)
    assert calls == []
    monkeypatch.setenv("TDSNN_KERNELS", "reference")
    r_ref = r0.clone()
    assert torch.equal(swap_window(r_ref, k, a, c), perm_auto)
    assert calls == [1] and torch.equal(r_ref, r_auto)


def test_swap_optimize_is_the_same_with_the_kernel_and_the_reference(cpu_kernels, monkeypatch):
    sheet = build_sheet("V1", (8, 8, 8), 8.0, 2.0, seed=0)
    responses = torch.randn(20, sheet.num_units, generator=torch.Generator().manual_seed(0))
    out = {}
    for policy in ("auto", "reference"):
        monkeypatch.setenv("TDSNN_KERNELS", policy)
        generator = torch.Generator().manual_seed(4)
        out[policy] = swap_optimize(
            sheet, responses, steps=20, swaps_per_step=200, generator=generator
        )
    assert torch.equal(out["auto"].positions, out["reference"].positions)
    assert not torch.equal(out["auto"].positions, sheet.positions)
