"""The LIF op: its PyTorch reference, the Python layer of ``torch.ops.tdsnn.lif_forward`` /
``lif_backward`` (fake functions, autograd formula) and the one point that picks between them.

The equations are those of :mod:`tdsnn.neurons`, which validates the parameters and calls
:func:`run_lif`. The kernels are compiled, for the CPU (``cuda_kernels/lif_cpu.cpp``) and for CUDA
(``lif.cu``); the PyTorch reference (:func:`lif_forward_reference`, :func:`lif_backward_reference`
in the autograd op :class:`LIFMultiStep`) runs where they do not, and :func:`lif_reference` is the
autograd-differentiated loop they are all tested against. :func:`register` (called by
:func:`tdsnn.ops.load_kernels` once the compiled library has defined the schemas) registers the
fake functions and the autograd formula.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tdsnn import ops
from tdsnn.errors import ConfigError
from tdsnn.ops.surrogates import SURROGATES, Surrogate, get_surrogate

__all__ = [
    "LIFMultiStep",
    "LIFParams",
    "kernel_supports",
    "lif_backward_reference",
    "lif_forward_reference",
    "lif_kernel",
    "lif_op_args",
    "lif_reference",
    "membrane_dtype",
    "register",
    "run_lif",
]

_REDUCED = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class LIFParams:
    """The LIF hyper-parameters (equations in :mod:`tdsnn.neurons`), checked on construction:
    the one parameter type from ``ModelConfig`` through :class:`tdsnn.neurons.LIF` and
    :func:`tdsnn.neurons.lif_multistep` to the ops and the NIR export.

    - ``tau``: membrane time constant in steps, >= 1 (1 - 1/tau is the per-step decay);
    - ``v_threshold``: firing threshold V_th (> v_reset; > 0 with a soft reset);
    - ``v_reset``: reset potential of a hard reset, or ``None`` for a soft reset (V -= V_th);
    - ``decay_input``: whether the input is divided by tau in the charge equation;
    - ``detach_reset``: stop the gradient through S in the reset term;
    - ``surrogate``: backward of the spike function, a :class:`Surrogate` or a name in
      ``SURROGATES`` (with its default alpha).

    Numbers are stored as Python floats. A bad value raises a one-line ``ConfigError``.
    """

    tau: float = 2.0
    v_threshold: float = 1.0
    v_reset: float | None = 0.0
    decay_input: bool = True
    detach_reset: bool = False
    surrogate: Surrogate = "atan"  # type: ignore[assignment]  # a name becomes its Surrogate

    def __post_init__(self) -> None:
        _check_potentials(self.tau, self.v_threshold, self.v_reset)
        set_field = object.__setattr__  # frozen: normalise once, here
        set_field(self, "tau", float(self.tau))
        set_field(self, "v_threshold", float(self.v_threshold))
        set_field(self, "v_reset", None if self.v_reset is None else float(self.v_reset))
        set_field(self, "decay_input", bool(self.decay_input))
        set_field(self, "detach_reset", bool(self.detach_reset))
        set_field(self, "surrogate", _surrogate(self.surrogate))


def _surrogate(surrogate: str | Surrogate) -> Surrogate:
    if isinstance(surrogate, Surrogate):
        return surrogate
    if isinstance(surrogate, str):
        return get_surrogate(surrogate)
    raise ConfigError(
        f"surrogate must be a name in {sorted(SURROGATES)} or a Surrogate, got {surrogate!r}"
    )


def _check_potentials(tau: float, v_threshold: float, v_reset: float | None) -> None:
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


class LIFMultiStep(torch.autograd.Function):
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


def lif_reference(
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


def run_lif(x: Tensor, p: LIFParams, keep_membrane: bool) -> tuple[Tensor, Tensor | None]:
    """The one dispatch point of the LIF: the compiled ``torch.ops.tdsnn.lif_forward`` when
    :func:`tdsnn.ops.use_kernels` says so and the surrogate is a built-in one, else the PyTorch
    op :class:`LIFMultiStep` (``tdsnn info`` reports which).

    ``x [T, *]`` -> (spikes ``[T, *]`` in x's dtype, H ``[T, *]`` or None).
    """
    if ops.use_kernels(x, "lif") and kernel_supports(p.surrogate):
        return lif_kernel(x, p, keep_membrane)
    return LIFMultiStep.apply(x, p, keep_membrane)


def kernel_supports(surrogate: Surrogate) -> bool:
    """Whether the kernel computes this surrogate (the built-in classes; not user subclasses)."""
    return SURROGATES.get(surrogate.name) is type(surrogate)


def membrane_dtype(x_dtype: torch.dtype, full_membrane: bool) -> torch.dtype:
    """dtype of the op's H: x's for float16/bfloat16 unless ``full_membrane``, else the state's."""
    if x_dtype in _REDUCED and not full_membrane:
        return x_dtype
    return torch.promote_types(x_dtype, torch.float32)


def lif_op_args(p: LIFParams) -> tuple:
    """The LIF arguments of the compiled ops' schemas (``tau`` ... ``alpha``) from ``p``."""
    soft = p.v_reset is None
    return (
        p.tau,
        p.v_threshold,
        0.0 if soft else p.v_reset,
        soft,
        p.decay_input,
        p.detach_reset,
        p.surrogate.name,
        p.surrogate.alpha,
    )


# ----------------------------------------------------------------------------- fake functions


def output_layout(x: Tensor) -> Tensor:
    """A tensor with the strides the kernels (CPU and CUDA) give their outputs for input ``x``:
    x's own when x is dense with time outermost (so channels-last runs without a copy), else
    contiguous."""
    if time_major_dense(x):
        return x
    return x.new_empty(x.shape)


def time_major_dense(x: Tensor) -> bool:
    """Whether ``x [T, *]`` is dense and non-overlapping with the time dimension outermost
    (the test of ``lif_common.h``): its strides, inner to outer, those of a contiguous layout."""
    if x.dim() == 0:
        return False
    dims = sorted(
        (stride, size) for size, stride in zip(x.shape, x.stride(), strict=True) if size != 1
    )
    expected = 1
    for stride, size in dims:
        if stride != expected:
            return False
        expected *= size
    return x.shape[0] <= 1 or x.stride(0) == x.numel() // x.shape[0]


def _forward_fake(x, tau, v_threshold, v_reset, soft_reset, decay_input, detach_reset, surrogate,
                  alpha, full_membrane):  # fmt: skip
    torch._check(x.dim() >= 1, lambda: "lif_forward: x must be time-major [T, *]")
    like = output_layout(x)
    return torch.empty_like(like), torch.empty_like(
        like, dtype=membrane_dtype(x.dtype, full_membrane)
    )


def _backward_fake(grad_spikes, grad_membrane, membrane, tau, v_threshold, v_reset, soft_reset,
                   decay_input, detach_reset, surrogate, alpha, grad_dtype):  # fmt: skip
    return torch.empty_like(output_layout(membrane), dtype=grad_dtype)


# ----------------------------------------------------------------------------- autograd


def _setup_context(ctx, inputs, output) -> None:
    x, *args, full_membrane = inputs
    ctx.args = tuple(args)
    ctx.full_membrane = full_membrane
    ctx.x_dtype = x.dtype
    ctx.save_for_backward(output[1])


def _backward(ctx, grad_spikes: Tensor | None, grad_membrane: Tensor | None):
    (membrane,) = ctx.saved_tensors
    grad_x = torch.ops.tdsnn.lif_backward(
        grad_spikes,
        grad_membrane if ctx.full_membrane else None,
        membrane,
        *ctx.args,
        ctx.x_dtype,
    )
    return (grad_x,) + (None,) * 9


def lif_kernel(x: Tensor, p: LIFParams, keep_membrane: bool) -> tuple[Tensor, Tensor | None]:
    """Run ``torch.ops.tdsnn.lif_forward``: (spikes ``[T, *]``, H ``[T, *]`` or None).

    H is float32 (float64 for float64 x) when ``keep_membrane``; otherwise the op saves
    H - V_th in x's precision for the backward (float16/bfloat16) and returns nothing.
    """
    spikes, membrane = torch.ops.tdsnn.lif_forward(x, *lif_op_args(p), keep_membrane)
    return spikes, (membrane if keep_membrane else None)


def register() -> None:
    """Register the fake functions and the autograd formula (after the schemas exist; called
    once, by :func:`tdsnn.ops.load_kernels`)."""
    torch.library.register_fake("tdsnn::lif_forward", _forward_fake)
    torch.library.register_fake("tdsnn::lif_backward", _backward_fake)
    torch.library.register_autograd("tdsnn::lif_forward", _backward, setup_context=_setup_context)
