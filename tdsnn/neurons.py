"""Leaky integrate-and-fire (LIF) neurons: the multi-step PyTorch reference and its module.

Equations
---------
Time is counted in simulation steps (one step = ``dt`` ms, see DESIGN.md §4); ``tau`` is in steps.
Potentials are dimensionless, in the units of the input current. For every unit, with input
current X[t], charged potential H[t] and membrane V[t] (after reset), t = 1..T:

- charge, ``decay_input=True``:  H[t] = V[t-1] + (X[t] - (V[t-1] - V_reset)) / tau
- charge, ``decay_input=False``: H[t] = V[t-1] - (V[t-1] - V_reset) / tau + X[t]
- fire:                          S[t] = 1 if H[t] >= V_th else 0
- reset, hard (``v_reset`` a float): V[t] = V_reset if S[t] else H[t]
  (computed as S·V_reset + (1 - S)·H)
- reset, soft (``v_reset=None``):    V[t] = H[t] - S[t]·V_th, and V_reset := 0 in the charge

V[0] = V_reset (hard) or 0 (soft): every call starts from rest and keeps no state afterwards.
In the backward pass dS/dH is replaced by a surrogate derivative g'(H - V_th) (see ``SURROGATES``);
``detach_reset=True`` stops the gradient through S inside the reset term only.
These are the dynamics of spikingjelly 2.0's ``LIFNode`` (``step_mode='m'``); with the same
settings spikes and input gradients agree to float tolerance (tests/test_neurons.py).

Shapes: X is time-major ``[T, *]`` (e.g. ``[T, B, C, H, W]``); S and H have the same shape.
State and arithmetic are float32 (float64 for float64 input) whatever the input dtype, so bf16 and
fp16 inputs (also under ``torch.autocast``) give spikes in the input dtype from fp32 dynamics.

Mapping to snntorch
-------------------
snntorch 1.0's ``Leaky`` computes U[t] = beta·U[t-1] + I[t], then fires S[t] = 1[U[t] > theta].
With V_reset = 0 our charge is H[t] = (1 - 1/tau)·V[t-1] + X[t]/tau, so feed I = X/tau
(``decay_input=True``) or I = X (``decay_input=False``) and use beta = 1 - 1/tau, theta = V_th:

- hard reset to 0, ``detach_reset=False`` ==
  ``Leaky(beta=1-1/tau, threshold=V_th, reset_mechanism='zero', reset_delay=False)``:
  same spikes and input gradients; its returned ``mem`` is V (after reset).
- hard reset to 0, ``detach_reset=True`` == the same with snntorch's default
  ``reset_delay=True``: snntorch applies the (detached) reset at the start of the next step,
  so spikes and input gradients are the same and its returned ``mem`` is H (before reset).
- soft reset, ``detach_reset=False`` ==
  ``Leaky(beta=1-1/tau, threshold=V_th, reset_mechanism='subtract', reset_delay=False)``
  only while the membrane after a reset stays below V_th (H < 2·V_th at every step). snntorch
  still computes its delayed reset flag R[t] = 1[U[t-1] > theta] from the stored, already reset
  membrane: when that is still above theta it subtracts theta again before the threshold test
  (and adds it back if no spike follows), so that step fires only above 2·theta.
- snntorch's default ``reset_mechanism='subtract'`` with ``reset_delay=True`` is a different
  neuron: it subtracts theta after the decay, U[t] = beta·U[t-1] + I[t] - S[t-1]·theta, where
  we have H[t] = beta·(H[t-1] - S[t-1]·V_th) + X[t]/tau. In our checks on random inputs that
  make the neurons fire often, 17-21 % of the spikes differed.
- snntorch fires on the strict U > theta, we on H >= V_th: outputs differ whenever H equals
  V_th exactly. A hard reset to V_reset != 0 has no ``Leaky`` equivalent.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from tdsnn import ops
from tdsnn.errors import ConfigError

__all__ = [
    "LIF",
    "SURROGATES",
    "ATan",
    "FastSigmoid",
    "PiecewiseQuadratic",
    "Sigmoid",
    "Surrogate",
    "get_surrogate",
    "lif_multistep",
]


# --------------------------------------------------------------------------------------------
# Surrogate gradients
# --------------------------------------------------------------------------------------------


class _SurrogateSpike(torch.autograd.Function):
    """Heaviside step 1[x >= 0] forward; ``surrogate.derivative(x)`` backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, surrogate: Surrogate) -> Tensor:
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad_spikes: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        return grad_spikes * ctx.surrogate.derivative(x), None


@dataclass(frozen=True)
class Surrogate:
    """Spike function: Heaviside step 1[x >= 0] forward, smooth pseudo-derivative g'(x) backward.

    Calling an instance on ``x: [*]`` (the potential above threshold, H - V_th) returns spikes
    ``[*]`` in x's dtype with values in {0, 1}. Subclasses set ``name`` and define
    ``derivative``; ``alpha`` (> 0) sets the sharpness of g'.
    """

    alpha: float
    name: ClassVar[str] = ""

    def __post_init__(self) -> None:
        if not (isinstance(self.alpha, numbers.Real) and math.isfinite(self.alpha)):
            raise ConfigError(
                f"surrogate {self.name!r}: alpha must be a finite number, got {self.alpha!r}"
            )
        if self.alpha <= 0:
            raise ConfigError(f"surrogate {self.name!r}: alpha must be > 0, got {self.alpha}")
        object.__setattr__(self, "alpha", float(self.alpha))  # frozen: normalise the type

    def __call__(self, x: Tensor) -> Tensor:
        return _SurrogateSpike.apply(x, self)

    def derivative(self, x: Tensor) -> Tensor:
        """g'(x), same shape and dtype as ``x``."""
        raise NotImplementedError


@dataclass(frozen=True)
class ATan(Surrogate):
    """Arctangent surrogate (default): g'(x) = (alpha/2) / (1 + (pi/2·alpha·x)^2), alpha = 2.

    Same formula as spikingjelly ``surrogate.ATan`` and snntorch ``surrogate.atan``.
    """

    alpha: float = 2.0
    name: ClassVar[str] = "atan"

    def derivative(self, x: Tensor) -> Tensor:
        z = x * (math.pi / 2 * self.alpha)
        return (self.alpha / 2) / (1 + z * z)


@dataclass(frozen=True)
class Sigmoid(Surrogate):
    """Logistic surrogate: g'(x) = alpha·s(alpha·x)·(1 - s(alpha·x)), s = logistic, alpha = 4.

    Same formula as spikingjelly ``surrogate.Sigmoid`` and snntorch ``surrogate.sigmoid(slope)``.
    """

    alpha: float = 4.0
    name: ClassVar[str] = "sigmoid"

    def derivative(self, x: Tensor) -> Tensor:
        s = torch.sigmoid(self.alpha * x)
        return self.alpha * s * (1 - s)


@dataclass(frozen=True)
class PiecewiseQuadratic(Surrogate):
    """Triangle surrogate: g'(x) = max(0, alpha - alpha^2·|x|), alpha = 1.

    Same formula as spikingjelly ``surrogate.PiecewiseQuadratic`` (support |x| < 1/alpha).
    """

    alpha: float = 1.0
    name: ClassVar[str] = "piecewise-quadratic"

    def derivative(self, x: Tensor) -> Tensor:
        return (self.alpha - self.alpha * self.alpha * x.abs()).clamp_min(0)


@dataclass(frozen=True)
class FastSigmoid(Surrogate):
    """Fast-sigmoid surrogate: g'(x) = 1 / (1 + alpha·|x|)^2, alpha = 25.

    The SuperSpike pseudo-derivative (Zenke & Ganguli 2018) and snntorch's
    ``surrogate.fast_sigmoid(slope=alpha)``. Not spikingjelly's ``SuperSpike``, which is
    alpha / (1 + |x|)^2.
    """

    alpha: float = 25.0
    name: ClassVar[str] = "fast-sigmoid"

    def derivative(self, x: Tensor) -> Tensor:
        z = 1 + self.alpha * x.abs()
        return 1 / (z * z)


SURROGATES: dict[str, type[Surrogate]] = {
    cls.name: cls for cls in (ATan, Sigmoid, PiecewiseQuadratic, FastSigmoid)
}


def get_surrogate(name: str, alpha: float | None = None) -> Surrogate:
    """The surrogate registered as ``name`` (a key of ``SURROGATES``), with its default alpha
    unless ``alpha`` is given. Unknown names raise ``ConfigError`` listing the valid ones."""
    if name not in SURROGATES:
        valid = ", ".join(sorted(SURROGATES))
        raise ConfigError(f"unknown surrogate {name!r}; expected one of: {valid}")
    cls = SURROGATES[name]
    return cls() if alpha is None else cls(alpha=alpha)


# --------------------------------------------------------------------------------------------
# Multi-step LIF
# --------------------------------------------------------------------------------------------


def _check_lif_params(tau: float, v_threshold: float, v_reset: float | None) -> None:
    """Raise ``ConfigError`` for LIF parameters that make no neuron."""
    if not (isinstance(tau, numbers.Real) and math.isfinite(tau) and tau >= 1):
        raise ConfigError(
            f"tau must be a finite number of time steps >= 1 (below 1 the membrane oscillates "
            f"or diverges), got {tau!r}"
        )
    if not (isinstance(v_threshold, numbers.Real) and math.isfinite(v_threshold)):
        raise ConfigError(f"v_threshold must be a finite number, got {v_threshold!r}")
    if v_reset is None:
        if v_threshold <= 0:
            raise ConfigError(
                f"v_threshold must be > 0 for soft reset (v_reset=None, rest at 0), "
                f"got v_threshold={v_threshold}"
            )
        return
    if not (isinstance(v_reset, numbers.Real) and math.isfinite(v_reset)):
        raise ConfigError(f"v_reset must be a finite number or None (soft reset), got {v_reset!r}")
    if v_threshold <= v_reset:
        raise ConfigError(
            f"v_threshold must be > v_reset for hard reset, got v_threshold={v_threshold}, "
            f"v_reset={v_reset}"
        )


def _resolve_surrogate(surrogate: str | Surrogate) -> Surrogate:
    if isinstance(surrogate, Surrogate):
        return surrogate
    if isinstance(surrogate, str):
        return get_surrogate(surrogate)
    raise ConfigError(
        f"surrogate must be a name in {sorted(SURROGATES)} or a Surrogate, got {surrogate!r}"
    )


def lif_multistep(
    x: Tensor,
    *,
    tau: float = 2.0,
    v_threshold: float = 1.0,
    v_reset: float | None = 0.0,
    decay_input: bool = True,
    detach_reset: bool = False,
    surrogate: str | Surrogate = "atan",
    return_membrane: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Run the LIF equations of this module over all T steps of ``x``, starting from rest.

    Args:
        x: input current ``[T, *]``, time-major, floating point (bf16/fp16 run in float32).
        tau: membrane time constant in steps, >= 1 (1 - 1/tau is the per-step decay).
        v_threshold: firing threshold V_th.
        v_reset: reset potential of a hard reset, or ``None`` for a soft reset (V -= V_th).
        decay_input: whether the input is divided by tau in the charge equation.
        detach_reset: stop the gradient through S in the reset term.
        surrogate: backward of the spike function: a name in ``SURROGATES`` or a ``Surrogate``.
        return_membrane: also return the charged potential H.

    Returns:
        spikes ``[T, *]`` in x's dtype, values {0, 1}; with ``return_membrane`` also
        H ``[T, *]`` float32 (float64 for float64 x), the potential before reset.
    """
    _check_lif_params(tau, v_threshold, v_reset)
    surrogate = _resolve_surrogate(surrogate)
    if not (isinstance(x, Tensor) and x.is_floating_point()):
        kind = x.dtype if isinstance(x, Tensor) else type(x).__name__
        raise TypeError(f"x must be a floating-point tensor [T, *], got {kind}")
    if x.dim() == 0:
        raise ConfigError("x must be time-major [T, *] with a time dimension, got a 0-d tensor")
    params = LIFParams(
        tau=float(tau),
        v_threshold=float(v_threshold),
        v_reset=None if v_reset is None else float(v_reset),
        decay_input=decay_input,
        detach_reset=detach_reset,
        surrogate=surrogate,
    )
    spikes, membrane = _run_lif(x, params, return_membrane)
    return (spikes, membrane) if return_membrane else spikes


def _run_lif(x: Tensor, p: LIFParams, keep_membrane: bool) -> tuple[Tensor, Tensor | None]:
    """The one dispatch point of the LIF: the compiled ``torch.ops.tdsnn.lif_forward`` for
    CUDA tensors when :func:`tdsnn.ops.use_kernels` says so and the surrogate is a built-in
    one, else the PyTorch op :class:`_LIFMultiStep` (``tdsnn info`` reports which)."""
    if ops.use_kernels(x, "lif"):
        from tdsnn.ops.lif import kernel_supports, lif_kernel

        if kernel_supports(p.surrogate):
            return lif_kernel(x, p, keep_membrane)
    return _LIFMultiStep.apply(x, p, keep_membrane)


@dataclass(frozen=True)
class LIFParams:
    """Validated LIF hyper-parameters (see ``lif_multistep``)."""

    tau: float
    v_threshold: float
    v_reset: float | None
    decay_input: bool
    detach_reset: bool
    surrogate: Surrogate


def lif_forward_reference(x: Tensor, p: LIFParams) -> tuple[Tensor, Tensor]:
    """Forward of the LIF over all T steps: ``x [T, *]`` -> (spikes ``[T, *]`` in x's dtype,
    H ``[T, *]`` in the state dtype, float32 or float64). No autograd graph."""
    state_dtype = torch.promote_types(x.dtype, torch.float32)
    rest = 0.0 if p.v_reset is None else p.v_reset
    decay = 1.0 - 1.0 / p.tau
    # H[t] = decay·V[t-1] + drive[t], drive = (X + rest)/tau or X + rest/tau
    if p.decay_input:
        drive = (x.to(state_dtype) + rest) / p.tau
    else:
        drive = x.to(state_dtype) + rest / p.tau
    h_seq = torch.empty_like(drive)
    v = torch.full_like(drive[0], rest) if x.shape[0] else None
    for t in range(x.shape[0]):
        h = torch.add(drive[t], v, alpha=decay, out=h_seq[t])
        fired = h >= p.v_threshold
        if p.v_reset is not None:
            v = h.masked_fill(fired, p.v_reset)
        else:
            v = torch.where(fired, h - p.v_threshold, h)
    return (h_seq >= p.v_threshold).to(x.dtype), h_seq


def lif_backward_reference(
    grad_spikes: Tensor | None,
    grad_membrane: Tensor | None,
    h_seq: Tensor,
    p: LIFParams,
    grad_dtype: torch.dtype,
) -> Tensor:
    """Reverse-time recurrence of the LIF: dL/dX ``[T, *]`` in ``grad_dtype`` from the saved H.

    With psi[t] = g'(H[t] - V_th), D[t] = dV[t]/dH[t] (hard: 1 - S + (V_reset - H)·psi,
    soft: 1 - V_th·psi; without the psi term when ``detach_reset``) and
    k = 1 - 1/tau = dH[t+1]/dV[t]:

        dL/dH[t] = dL/dS[t]·psi[t] + dL/dH[t] (direct, if H is an output)
                   + k·D[t]·dL/dH[t+1]
        dL/dX[t] = dL/dH[t] / tau  (decay_input)  or  dL/dH[t]

    Each step costs a few whole-tensor operations instead of an autograd graph of about
    fifteen.
    """
    h_seq = h_seq.to(torch.promote_types(h_seq.dtype, torch.float32))
    decay = 1.0 - 1.0 / p.tau
    above = h_seq - p.v_threshold
    psi = p.surrogate.derivative(above)
    fired = (above >= 0).to(h_seq.dtype)
    if p.v_reset is None:
        dv_dh = 1.0 - p.v_threshold * psi if not p.detach_reset else torch.ones_like(psi)
    else:
        dv_dh = 1.0 - fired
        if not p.detach_reset:
            dv_dh = dv_dh + (p.v_reset - h_seq) * psi
    carry_factor = dv_dh.mul_(decay)  # k·D[t]
    local = psi.mul_(grad_spikes.to(h_seq.dtype)) if grad_spikes is not None else psi.zero_()
    if grad_membrane is not None:
        local = local.add_(grad_membrane)
    grad_h = local  # filled in place, last step first
    for t in range(h_seq.shape[0] - 2, -1, -1):
        grad_h[t].addcmul_(grad_h[t + 1], carry_factor[t])
    if p.decay_input:
        grad_h = grad_h.div_(p.tau)
    return grad_h.to(grad_dtype)


class _LIFMultiStep(torch.autograd.Function):
    """The multi-step LIF as one autograd op over all T steps: the PyTorch path (CPU, and CUDA
    without the compiled kernel). Forward saves only H; backward is the reverse-time recurrence
    of :func:`lif_backward_reference`."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, p: LIFParams, keep_membrane: bool):
        spikes, h_seq = lif_forward_reference(x, p)
        ctx.save_for_backward(h_seq)
        ctx.params = p
        ctx.input_dtype = x.dtype
        return spikes, (h_seq if keep_membrane else None)

    @staticmethod
    def backward(ctx: Any, grad_spikes: Tensor | None, grad_membrane: Tensor | None):
        (h_seq,) = ctx.saved_tensors
        grad_x = lif_backward_reference(
            grad_spikes, grad_membrane, h_seq, ctx.params, ctx.input_dtype
        )
        return grad_x, None, None


def _lif_reference(
    x: Tensor,
    *,
    tau: float,
    v_threshold: float,
    v_reset: float | None,
    decay_input: bool,
    detach_reset: bool,
    surrogate: Surrogate,
    keep_membrane: bool,
) -> tuple[Tensor, Tensor | None]:
    """Pure-PyTorch loop over T, differentiated by autograd: the oracle for fused kernels.

    ``x: [T, *]`` -> (spikes ``[T, *]`` in x's dtype, H ``[T, *]`` in the state dtype or None).
    Arguments are validated by ``lif_multistep``.
    """
    state_dtype = torch.promote_types(x.dtype, torch.float32)
    if x.shape[0] == 0:
        empty = x.new_empty(x.shape)
        return empty, empty.to(state_dtype) if keep_membrane else None
    rest = 0.0 if v_reset is None else v_reset
    v: Tensor | float = rest  # V[0]; a scalar until the first step, no [*] allocation
    spikes: list[Tensor] = []
    charged: list[Tensor] = []
    for x_t in x.to(state_dtype).unbind(0):
        leak = v - rest if rest != 0.0 else v
        h = v + (x_t - leak) / tau if decay_input else v - leak / tau + x_t
        s = surrogate(h - v_threshold)
        s_reset = s.detach() if detach_reset else s
        if v_reset is None:
            v = h - s_reset * v_threshold
        elif v_reset == 0.0:
            v = (1.0 - s_reset) * h
        else:
            v = s_reset * v_reset + (1.0 - s_reset) * h
        spikes.append(s)
        if keep_membrane:
            charged.append(h)
    membrane = torch.stack(charged) if keep_membrane else None
    return torch.stack(spikes).to(x.dtype), membrane


class LIF(nn.Module):
    """Multi-step LIF layer: ``[T, *]`` current -> ``[T, *]`` spikes (see ``lif_multistep``).

    Holds only Python-float hyper-parameters: no parameters, buffers or membrane state, so every
    forward starts from rest and nothing needs resetting between batches (safe under DDP).
    ``surrogate_alpha`` overrides the default alpha of a surrogate given by name.
    """

    def __init__(
        self,
        tau: float = 2.0,
        v_threshold: float = 1.0,
        v_reset: float | None = 0.0,
        decay_input: bool = True,
        detach_reset: bool = False,
        surrogate: str | Surrogate = "atan",
        surrogate_alpha: float | None = None,
    ) -> None:
        super().__init__()
        _check_lif_params(tau, v_threshold, v_reset)
        if isinstance(surrogate, Surrogate) and surrogate_alpha is not None:
            raise ConfigError(
                "surrogate_alpha is only used with a surrogate name; got a Surrogate instance "
                f"{surrogate!r} and surrogate_alpha={surrogate_alpha}: set alpha in one place"
            )
        if isinstance(surrogate, str):
            surrogate = get_surrogate(surrogate, surrogate_alpha)
        self.tau = tau
        self.v_threshold = v_threshold
        self.v_reset = v_reset
        self.decay_input = decay_input
        self.detach_reset = detach_reset
        self.surrogate = _resolve_surrogate(surrogate)

    def forward(self, x: Tensor, return_membrane: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """``x: [T, *]`` -> spikes ``[T, *]`` (and H ``[T, *]`` float32 if ``return_membrane``)."""
        return lif_multistep(
            x,
            tau=self.tau,
            v_threshold=self.v_threshold,
            v_reset=self.v_reset,
            decay_input=self.decay_input,
            detach_reset=self.detach_reset,
            surrogate=self.surrogate,
            return_membrane=return_membrane,
        )

    def extra_repr(self) -> str:
        return (
            f"tau={self.tau}, v_threshold={self.v_threshold}, v_reset={self.v_reset}, "
            f"decay_input={self.decay_input}, detach_reset={self.detach_reset}, "
            f"surrogate={self.surrogate!r}"
        )
