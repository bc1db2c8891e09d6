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

This module holds the layer; the parameters (:class:`LIFParams`, checked on construction) and
the op itself (PyTorch reference, compiled
kernels and the choice between them) is :mod:`tdsnn.ops.lif`, and the surrogates are defined in
:mod:`tdsnn.ops.surrogates` and re-exported here.

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

from typing import Any

from torch import Tensor, nn

from tdsnn.errors import ConfigError
from tdsnn.ops import surrogates
from tdsnn.ops.lif import LIFParams, lif_backward_reference, lif_forward_reference, run_lif
from tdsnn.ops.surrogates import (  # noqa: F401 - re-exported (__all__)
    SURROGATES,
    ATan,
    FastSigmoid,
    PiecewiseQuadratic,
    Sigmoid,
    Surrogate,
    get_surrogate,
)

__all__ = [
    "LIF",
    "LIFParams",
    "lif_backward_reference",
    "lif_forward_reference",
    "lif_multistep",
    *surrogates.__all__,  # re-exported
]


# --------------------------------------------------------------------------------------------
# Multi-step LIF
# --------------------------------------------------------------------------------------------


def lif_multistep(
    x: Tensor,
    params: LIFParams | None = None,
    *,
    return_membrane: bool = False,
    **fields: Any,
) -> Tensor | tuple[Tensor, Tensor]:
    """Run the LIF equations of this module over all T steps of ``x``, starting from rest.

    Args:
        x: input current ``[T, *]``, time-major, floating point (bf16/fp16 run in float32).
        params: the neuron's :class:`LIFParams`; or give its fields by name (``tau=4.0``,
            ``v_reset=None``, ``surrogate="sigmoid"``, ...), the others at their defaults.
        return_membrane: also return the charged potential H.

    Returns:
        spikes ``[T, *]`` in x's dtype, values {0, 1}; with ``return_membrane`` also
        H ``[T, *]`` float32 (float64 for float64 x), the potential before reset.
    """
    params = _params(params, fields)
    if not (isinstance(x, Tensor) and x.is_floating_point()):
        kind = x.dtype if isinstance(x, Tensor) else type(x).__name__
        raise TypeError(f"x must be a floating-point tensor [T, *], got {kind}")
    if x.dim() == 0:
        raise ConfigError("x must be time-major [T, *] with a time dimension, got a 0-d tensor")
    spikes, membrane = run_lif(x, params, return_membrane)
    return (spikes, membrane) if return_membrane else spikes


def _params(params: LIFParams | None, fields: dict[str, Any]) -> LIFParams:
    """``params``, or a :class:`LIFParams` of ``fields`` (not both)."""
    if params is None:
        return LIFParams(**fields)
    if fields:
        raise ConfigError(
            f"give the LIF parameters as LIFParams or by name, not both (got params and "
            f"{sorted(fields)})"
        )
    if not isinstance(params, LIFParams):
        raise ConfigError(f"params must be a LIFParams, got {type(params).__name__}")
    return params


class LIF(nn.Module):
    """Multi-step LIF layer: ``[T, *]`` current -> ``[T, *]`` spikes (see ``lif_multistep``).

    ``LIF(LIFParams(tau=4.0))`` or ``LIF(tau=4.0)``; ``surrogate_alpha`` overrides the default
    alpha of a surrogate given by name. Holds only its :class:`LIFParams` (``self.params``): no
    parameters, buffers or membrane state, so every forward starts from rest and nothing needs
    resetting between batches (safe under DDP).
    """

    def __init__(
        self,
        params: LIFParams | None = None,
        *,
        surrogate_alpha: float | None = None,
        **fields: Any,
    ) -> None:
        super().__init__()
        if surrogate_alpha is not None:
            surrogate = fields.get("surrogate", "atan")
            if not isinstance(surrogate, str):
                raise ConfigError(
                    "surrogate_alpha is only used with a surrogate name; got a Surrogate "
                    f"instance {surrogate!r} and surrogate_alpha={surrogate_alpha}: set alpha "
                    "in one place"
                )
            fields["surrogate"] = get_surrogate(surrogate, surrogate_alpha)
        self.params = _params(params, fields)

    def forward(self, x: Tensor, return_membrane: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """``x: [T, *]`` -> spikes ``[T, *]`` (and H ``[T, *]`` float32 if ``return_membrane``)."""
        return lif_multistep(x, self.params, return_membrane=return_membrane)

    def extra_repr(self) -> str:
        p = self.params
        return (
            f"tau={p.tau}, v_threshold={p.v_threshold}, v_reset={p.v_reset}, "
            f"decay_input={p.decay_input}, detach_reset={p.detach_reset}, "
            f"surrogate={p.surrogate!r}"
        )
