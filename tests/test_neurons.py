"""Tests of the reference multi-step LIF (tdsnn.neurons) against hand-worked trajectories,
a hand-derived backward recurrence, spikingjelly 2.0's LIFNode and snntorch 1.0's Leaky."""

from __future__ import annotations

import math

import pytest
import torch

from tdsnn.errors import ConfigError
from tdsnn.neurons import (
    LIF,
    SURROGATES,
    ATan,
    LIFParams,
    Surrogate,
    get_surrogate,
    lif_multistep,
)


def _v_after_reset(h: torch.Tensor, s: torch.Tensor, v_threshold: float, v_reset: float | None):
    """V[t] from H[t] and S[t]: [T, *] -> [T, *]."""
    if v_reset is None:
        return h - s * v_threshold
    return s * v_reset + (1 - s) * h


# ---------------------------------------------------------------------------------------------
# Hand-worked trajectories (tau = 2, V_th = 1; every value is exact in binary floating point)
# ---------------------------------------------------------------------------------------------


def test_hard_reset_trajectory():
    # X = 1.5, V0 = 0: H1 = 0 + (1.5 - 0)/2 = 0.75 (no spike, V = 0.75)
    # H2 = 0.75 + (1.5 - 0.75)/2 = 1.125 >= 1 -> spike, V = 0; then the cycle repeats.
    x = torch.full((5, 1), 1.5)
    s, h = lif_multistep(x, return_membrane=True)
    torch.testing.assert_close(h[:, 0], torch.tensor([0.75, 1.125, 0.75, 1.125, 0.75]))
    torch.testing.assert_close(s[:, 0], torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0]))


def test_soft_reset_trajectory():
    # X = 1.5, V0 = 0, V_reset := 0 in the charge:
    # H1 = 0.75                                  V1 = 0.75
    # H2 = 0.75 + 0.75/2 = 1.125 -> spike        V2 = 1.125 - 1 = 0.125
    # H3 = 0.125 + (1.5 - 0.125)/2 = 0.8125      V3 = 0.8125
    # H4 = 0.8125 + (1.5 - 0.8125)/2 = 1.15625 -> spike, V4 = 0.15625
    # H5 = 0.15625 + (1.5 - 0.15625)/2 = 0.828125
    x = torch.full((5, 1), 1.5)
    s, h = lif_multistep(x, v_reset=None, return_membrane=True)
    torch.testing.assert_close(h[:, 0], torch.tensor([0.75, 1.125, 0.8125, 1.15625, 0.828125]))
    torch.testing.assert_close(s[:, 0], torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0]))


def test_no_input_decay_trajectory_fires_at_equality():
    # decay_input=False, V_reset = -0.5 (so V0 = -0.5), X = 1:
    # H1 = -0.5 - (-0.5 + 0.5)/2 + 1 = 0.5                       V1 = 0.5
    # H2 = 0.5 - (0.5 + 0.5)/2 + 1 = 1.0 == V_th -> spike (>=)    V2 = -0.5
    # then the cycle repeats.
    x = torch.ones(4, 1)
    s, h = lif_multistep(x, v_reset=-0.5, decay_input=False, return_membrane=True)
    torch.testing.assert_close(h[:, 0], torch.tensor([0.5, 1.0, 0.5, 1.0]))
    torch.testing.assert_close(s[:, 0], torch.tensor([0.0, 1.0, 0.0, 1.0]))


# ---------------------------------------------------------------------------------------------
# Backward against a hand-derived reverse-time recurrence (float64)
# ---------------------------------------------------------------------------------------------


def _recurrence_grad(x, a, b, *, tau, v_threshold, v_reset, decay_input, detach_reset, sg):
    """dL/dX for L = sum(a·S + b·H), all [T, N] float64, derived by hand:

    dH[t] = a[t]·g[t] + b[t] + dV[t]·dV[t]/dH[t]
    dV[t]/dH[t] = (1 - S[t]) + (V_reset - H[t])·g[t]   (hard; g term dropped if detach_reset)
                = 1 - V_th·g[t]                         (soft; g term dropped if detach_reset)
    dX[t] = dH[t] / tau (decay_input) or dH[t];   dV[t-1] = dH[t]·(1 - 1/tau);   dV[T] = 0
    with g[t] = sg'(H[t] - V_th).
    """
    with torch.no_grad():
        s, h = lif_multistep(
            x,
            tau=tau,
            v_threshold=v_threshold,
            v_reset=v_reset,
            decay_input=decay_input,
            return_membrane=True,
        )
    g = sg.derivative(h - v_threshold)
    keep = 0.0 if detach_reset else 1.0
    dx = torch.empty_like(x)
    dv = torch.zeros_like(x[0])
    for t in reversed(range(x.shape[0])):
        if v_reset is None:
            dv_dh = 1 - keep * v_threshold * g[t]
        else:
            dv_dh = (1 - s[t]) + keep * (v_reset - h[t]) * g[t]
        dh = a[t] * g[t] + b[t] + dv * dv_dh
        dx[t] = dh / tau if decay_input else dh
        dv = dh * (1 - 1 / tau)
    return dx


@pytest.mark.parametrize("v_reset", [0.0, -0.3, None])
@pytest.mark.parametrize("decay_input", [True, False])
@pytest.mark.parametrize("detach_reset", [False, True])
def test_backward_matches_hand_recurrence(v_reset, decay_input, detach_reset):
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(6, 7, generator=gen, dtype=torch.float64) * 1.5 + 0.8).requires_grad_()
    a = torch.randn(6, 7, generator=gen, dtype=torch.float64)
    b = torch.randn(6, 7, generator=gen, dtype=torch.float64)
    params = dict(tau=3.0, v_threshold=0.9, v_reset=v_reset, decay_input=decay_input)
    sg = get_surrogate("sigmoid")
    s, h = lif_multistep(x, **params, detach_reset=detach_reset, surrogate=sg, return_membrane=True)
    assert h.dtype == torch.float64
    assert 0 < s.mean() < 1
    ((a * s).sum() + (b * h).sum()).backward()
    expected = _recurrence_grad(x.detach(), a, b, **params, detach_reset=detach_reset, sg=sg)
    torch.testing.assert_close(x.grad, expected, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Surrogates
# ---------------------------------------------------------------------------------------------

_FORMULAS = {  # g'(x) written out independently of tdsnn.neurons
    "atan": (2.0, lambda x, a: (a / 2) / (1 + (math.pi / 2 * a * x) ** 2)),
    "sigmoid": (4.0, lambda x, a: a * torch.sigmoid(a * x) * (1 - torch.sigmoid(a * x))),
    "piecewise-quadratic": (1.0, lambda x, a: torch.clamp(a - a**2 * x.abs(), min=0)),
    "fast-sigmoid": (25.0, lambda x, a: 1 / (1 + a * x.abs()) ** 2),
}


def test_registry_has_the_documented_surrogates():
    assert set(SURROGATES) == set(_FORMULAS)
    for name, cls in SURROGATES.items():
        assert issubclass(cls, Surrogate) and cls.name == name
        assert "g'(x)" in cls.__doc__


@pytest.mark.parametrize("name", sorted(_FORMULAS))
@pytest.mark.parametrize("alpha", [None, 0.7])
def test_surrogate_forward_is_step_and_backward_is_formula(name, alpha):
    default_alpha, formula = _FORMULAS[name]
    sg = get_surrogate(name, alpha)
    assert sg.alpha == (default_alpha if alpha is None else alpha)
    x = torch.tensor([-2.0, -0.5, -1e-3, 0.0, 1e-3, 0.4, 3.0], dtype=torch.float64)
    x.requires_grad_()
    y = sg(x)
    torch.testing.assert_close(y, torch.tensor([0.0, 0, 0, 1, 1, 1, 1], dtype=torch.float64))
    y.backward(torch.full_like(x, 2.0))
    torch.testing.assert_close(x.grad, 2.0 * formula(x.detach(), sg.alpha))


def test_fast_sigmoid_equals_snntorch_fast_sigmoid():
    from snntorch import surrogate as st_surrogate

    x = torch.linspace(-1, 1, 40, dtype=torch.float64)  # no exact zero: snntorch fires on x > 0
    ours = x.clone().requires_grad_()
    theirs = x.clone().requires_grad_()
    get_surrogate("fast-sigmoid", 10.0)(ours).sum().backward()
    st_surrogate.fast_sigmoid(slope=10.0)(theirs).sum().backward()
    torch.testing.assert_close(ours.grad, theirs.grad)


# ---------------------------------------------------------------------------------------------
# spikingjelly 2.0 LIFNode (step_mode='m'), float32
# ---------------------------------------------------------------------------------------------

_SJ_SURROGATES = {"atan": "ATan", "sigmoid": "Sigmoid", "piecewise-quadratic": "PiecewiseQuadratic"}


@pytest.mark.parametrize("surrogate", sorted(_SJ_SURROGATES))
@pytest.mark.parametrize("v_reset", [0.0, -0.2, None])
@pytest.mark.parametrize("decay_input", [True, False])
@pytest.mark.parametrize("detach_reset", [False, True])
@pytest.mark.parametrize("tau", [2.0, 5.0])
def test_matches_spikingjelly_lifnode(surrogate, v_reset, decay_input, detach_reset, tau):
    from spikingjelly.activation_based import neuron
    from spikingjelly.activation_based import surrogate as sj_surrogate

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 2, 3, 4, 4, generator=gen) * 2 + 1.0  # [T, B, C, H, W]
    w = torch.randn(x.shape, generator=gen)  # dL/dS
    params = dict(tau=tau, decay_input=decay_input, v_reset=v_reset, detach_reset=detach_reset)

    x_ours = x.clone().requires_grad_()
    s, h = lif_multistep(x_ours, **params, surrogate=surrogate, return_membrane=True)
    (w * s).sum().backward()

    node = neuron.LIFNode(
        **params,
        v_threshold=1.0,
        surrogate_function=getattr(sj_surrogate, _SJ_SURROGATES[surrogate])(),
        step_mode="m",
        store_v_seq=True,
    )  # fresh node: starts from rest
    x_sj = x.clone().requires_grad_()
    s_sj = node(x_sj)
    (w * s_sj).sum().backward()

    assert 0.05 < s.mean() < 0.95
    torch.testing.assert_close(s, s_sj, rtol=0, atol=0)
    torch.testing.assert_close(x_ours.grad, x_sj.grad)
    # spikingjelly exposes only V (after reset) as v_seq; rebuild V from our H and S.
    torch.testing.assert_close(_v_after_reset(h, s, 1.0, v_reset), node.v_seq.detach())


# ---------------------------------------------------------------------------------------------
# snntorch 1.0 Leaky: the mapping documented in tdsnn.neurons (float64, atan surrogate)
# ---------------------------------------------------------------------------------------------


def _run_leaky(x: torch.Tensor, *, tau: float, mechanism: str, reset_delay: bool):
    """snntorch Leaky(beta = 1 - 1/tau) over x [T, *], fed x/tau -> (spikes, mem) [T, *]."""
    import snntorch
    from snntorch import surrogate as st_surrogate

    leaky = snntorch.Leaky(
        beta=1 - 1 / tau,
        threshold=1.0,
        spike_grad=st_surrogate.atan(alpha=2.0),
        reset_mechanism=mechanism,
        reset_delay=reset_delay,
    )
    mem = leaky.reset_mem()
    spikes, mems = [], []
    for x_t in x / tau:
        spk, mem = leaky(x_t, mem)
        spikes.append(spk)
        mems.append(mem)
    return torch.stack(spikes), torch.stack(mems)


def _compare_with_leaky(x, *, v_reset, detach_reset, mechanism, reset_delay, tau=2.0):
    """(S, dL/dX, H) for tdsnn and (S, dL/dX, mem) for snntorch, with L = sum(w·S).

    snntorch's surrogate runs in float32, so its gradients are float32-accurate only.
    """
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=x.dtype)
    x_ours = x.clone().requires_grad_()
    s, h = lif_multistep(
        x_ours, tau=tau, v_reset=v_reset, detach_reset=detach_reset, return_membrane=True
    )
    (w * s).sum().backward()
    x_st = x.clone().requires_grad_()
    s_st, mem_st = _run_leaky(x_st, tau=tau, mechanism=mechanism, reset_delay=reset_delay)
    (w * s_st).sum().backward()
    s_st = s_st.to(x.dtype)  # snntorch's atan returns float32 spikes even for float64 input
    return (s, x_ours.grad, h), (s_st, x_st.grad, mem_st)


def _random_current(scale: float, seed: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(12, 64, 16, generator=gen, dtype=torch.float64) * scale - 0.3


@pytest.mark.parametrize("tau", [2.0, 4.0])
def test_snntorch_zero_reset_without_delay_is_hard_reset(tau):
    x = _random_current(6.0)
    (s, gx, h), (s_st, gx_st, mem_st) = _compare_with_leaky(
        x, tau=tau, v_reset=0.0, detach_reset=False, mechanism="zero", reset_delay=False
    )
    assert 0.05 < s.mean() < 0.95
    torch.testing.assert_close(s, s_st, rtol=0, atol=0)
    torch.testing.assert_close(gx, gx_st, rtol=1e-5, atol=1e-6)  # float32 surrogate
    torch.testing.assert_close(_v_after_reset(h, s, 1.0, 0.0), mem_st)  # mem is V


def test_snntorch_zero_reset_with_delay_is_detached_hard_reset():
    x = _random_current(6.0)
    (s, gx, h), (s_st, gx_st, mem_st) = _compare_with_leaky(
        x, v_reset=0.0, detach_reset=True, mechanism="zero", reset_delay=True
    )
    torch.testing.assert_close(s, s_st, rtol=0, atol=0)
    torch.testing.assert_close(gx, gx_st, rtol=1e-5, atol=1e-6)  # float32 surrogate
    torch.testing.assert_close(h, mem_st)  # mem is H: the reset waits for the next step


def test_snntorch_subtract_without_delay_is_soft_reset_below_two_thresholds():
    x = _random_current(3.2)  # x/2 < 1.5, so H < 2·V_th at every step
    (s, gx, h), (s_st, gx_st, mem_st) = _compare_with_leaky(
        x, v_reset=None, detach_reset=False, mechanism="subtract", reset_delay=False
    )
    assert h.max() < 2.0 and 0.05 < s.mean() < 0.95
    torch.testing.assert_close(s, s_st, rtol=0, atol=0)
    torch.testing.assert_close(gx, gx_st, rtol=1e-5, atol=1e-6)  # float32 surrogate
    torch.testing.assert_close(_v_after_reset(h, s, 1.0, None), mem_st)


@pytest.mark.parametrize(
    ("scale", "reset_delay"),
    [(8.0, False), (3.2, True)],  # H >= 2·V_th occurs / snntorch's default subtract
)
def test_snntorch_subtract_differs_where_documented(scale, reset_delay):
    x = _random_current(scale)
    (s, _, _), (s_st, _, _) = _compare_with_leaky(
        x, v_reset=None, detach_reset=False, mechanism="subtract", reset_delay=reset_delay
    )
    assert (s != s_st).double().mean() > 0.05


def test_snntorch_fires_on_strict_inequality():
    # decay_input=False, X = 1: H1 = 1.0 == V_th. tdsnn fires; snntorch (U > theta) does not.
    import snntorch

    x = torch.ones(1, 1)
    assert lif_multistep(x, decay_input=False).item() == 1.0
    spk, _ = snntorch.Leaky(beta=0.5, reset_mechanism="zero", reset_delay=False)(x[0])
    assert spk.item() == 0.0


# ---------------------------------------------------------------------------------------------
# Dtypes, shapes, statelessness, module
# ---------------------------------------------------------------------------------------------


def test_bf16_input_runs_fp32_dynamics():
    gen = torch.Generator().manual_seed(4)
    x16 = (torch.randn(6, 3, 8, 8, generator=gen) * 2).to(torch.bfloat16)
    s16, h16 = lif_multistep(x16, v_reset=None, return_membrane=True)
    s32, h32 = lif_multistep(x16.float(), v_reset=None, return_membrane=True)
    assert s16.dtype == torch.bfloat16 and h16.dtype == torch.float32
    assert s16.float().mean() > 0
    torch.testing.assert_close(s16.float(), s32, rtol=0, atol=0)
    torch.testing.assert_close(h16, h32, rtol=0, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s_ac = lif_multistep(x16)
    assert s_ac.dtype == torch.bfloat16
    torch.testing.assert_close(s_ac.float(), lif_multistep(x16.float()), rtol=0, atol=0)


def test_bf16_gradient_reaches_input():
    x = torch.randn(4, 10, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16)
    x.requires_grad_()
    lif_multistep(x).sum().backward()
    assert x.grad.dtype == torch.bfloat16 and x.grad.abs().sum() > 0


def test_five_d_shape_dtype_and_values():
    x = torch.randn(4, 2, 3, 5, 5, generator=torch.Generator().manual_seed(6)) * 2
    s, h = LIF()(x, return_membrane=True)
    assert s.shape == h.shape == x.shape
    assert s.dtype == h.dtype == torch.float32
    assert set(s.unique().tolist()) == {0.0, 1.0}


def test_empty_time_axis():
    s, h = lif_multistep(torch.zeros(0, 3), return_membrane=True)
    assert s.shape == h.shape == (0, 3)


def test_no_state_between_calls():
    lif = LIF(v_reset=None)
    x = torch.randn(5, 4, 6, generator=torch.Generator().manual_seed(7)) + 1.0
    first = lif(x)
    torch.testing.assert_close(lif(x), first, rtol=0, atol=0)
    torch.testing.assert_close(lif(x[:2]), first[:2], rtol=0, atol=0)  # restarts from rest
    assert list(lif.parameters()) == [] and list(lif.buffers()) == []
    assert lif.state_dict() == {}


def test_module_equals_function_and_repr():
    lif = LIF(tau=3.0, v_reset=None, decay_input=False, surrogate="sigmoid", surrogate_alpha=2.0)
    x = torch.randn(5, 7, generator=torch.Generator().manual_seed(8)).requires_grad_()
    kwargs = dict(tau=3.0, v_reset=None, decay_input=False, surrogate=get_surrogate("sigmoid", 2))
    torch.testing.assert_close(lif(x), lif_multistep(x, **kwargs))
    g_mod = torch.autograd.grad(lif(x).sum(), x)[0]
    g_fn = torch.autograd.grad(lif_multistep(x, **kwargs).sum(), x)[0]
    torch.testing.assert_close(g_mod, g_fn)
    text = repr(lif)
    for part in ["tau=3.0", "v_reset=None", "decay_input=False", "Sigmoid(alpha=2.0)"]:
        assert part in text
    assert LIF(surrogate=ATan(alpha=3.0)).params.surrogate == ATan(alpha=3.0)


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


def test_unknown_surrogate_lists_valid_names():
    with pytest.raises(ConfigError) as info:
        get_surrogate("arctan")
    for name in SURROGATES:
        assert name in str(info.value)
    with pytest.raises(ConfigError, match="piecewise-quadratic"):
        lif_multistep(torch.zeros(2, 1), surrogate="triangle")
    with pytest.raises(ConfigError, match="atan"):
        LIF(surrogate="nope")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(tau=0.5), "tau"),
        (dict(tau=-2.0), "tau"),
        (dict(tau=float("nan")), "tau"),
        (dict(v_threshold=0.0, v_reset=0.0), "v_threshold must be > v_reset"),
        (dict(v_threshold=-1.0, v_reset=None), "soft reset"),
        (dict(v_reset=float("inf")), "v_reset"),
        (dict(surrogate=3), "surrogate"),
    ],
)
def test_bad_parameters_raise_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        lif_multistep(torch.zeros(2, 1), **kwargs)
    if "surrogate" not in kwargs:
        with pytest.raises(ConfigError, match=match):
            LIF(**kwargs)


def test_bad_alpha_and_inputs():
    with pytest.raises(ConfigError, match="alpha"):
        get_surrogate("atan", 0.0)
    with pytest.raises(ConfigError, match="surrogate_alpha"):
        LIF(surrogate=ATan(), surrogate_alpha=1.0)
    with pytest.raises(TypeError, match="floating-point"):
        lif_multistep(torch.zeros(2, 1, dtype=torch.int64))
    with pytest.raises(ConfigError, match="time dimension"):
        lif_multistep(torch.tensor(1.0))


# ---------------------------------------------------------------------------------------------
# The op behind lif_multistep (hand-written backward) against the autograd reference loop
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("v_reset", [0.0, -0.3, None])
@pytest.mark.parametrize("decay_input", [True, False])
@pytest.mark.parametrize("detach_reset", [False, True])
@pytest.mark.parametrize("surrogate", ["atan", "sigmoid", "piecewise-quadratic", "fast-sigmoid"])
def test_multistep_op_matches_autograd_reference(v_reset, decay_input, detach_reset, surrogate):
    from tdsnn.ops.lif import lif_reference

    gen = torch.Generator().manual_seed(7)
    x = (torch.randn(6, 3, 17, generator=gen, dtype=torch.float64) * 1.5 + 0.6).requires_grad_()
    settings = dict(
        tau=2.5, v_threshold=0.8, v_reset=v_reset, decay_input=decay_input,
        detach_reset=detach_reset,
    )  # fmt: skip
    s, h = lif_multistep(x, surrogate=surrogate, return_membrane=True, **settings)
    s_ref, h_ref = lif_reference(
        x, surrogate=get_surrogate(surrogate), keep_membrane=True, **settings
    )
    torch.testing.assert_close(s, s_ref, rtol=0, atol=0)
    torch.testing.assert_close(h, h_ref, rtol=1e-12, atol=1e-12)
    gs, gh = torch.randn_like(s), torch.randn_like(h)
    for outputs, grads in (((s,), (gs,)), ((s, h), (gs, gh)), ((h,), (gh,))):
        refs = {id(s): s_ref, id(h): h_ref}
        ref_outputs = tuple(refs[id(o)] for o in outputs)
        (g,) = torch.autograd.grad(outputs, x, grads, retain_graph=True)
        (g_ref,) = torch.autograd.grad(ref_outputs, x, grads, retain_graph=True)
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)


def test_lif_params_are_the_one_parameter_type_from_the_config_to_the_op():
    from tdsnn.areas import make_units
    from tdsnn.model_config import ModelConfig
    from tdsnn.ops.lif import lif_op_args

    config = ModelConfig(tau=3.0, v_threshold=0.5, v_reset=None, surrogate="sigmoid")
    params = config.lif_params()
    assert params == LIFParams(3.0, 0.5, None, True, False, get_surrogate("sigmoid"))
    units = make_units(config)
    assert units.params is not None and units.params == params
    assert lif_op_args(units.params) == (3.0, 0.5, 0.0, True, True, False, "sigmoid", 4.0)
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(units(x), lif_multistep(x, params))
    torch.testing.assert_close(LIF(params)(x), LIF(**vars(params))(x))
    with pytest.raises(ConfigError, match="not both"):
        LIF(params, tau=2.0)
    with pytest.raises(ConfigError, match="tau must be a finite number"):
        LIFParams(tau=0.5)
