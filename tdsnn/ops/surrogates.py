"""Surrogate spike functions of the LIF op: Heaviside forward, a smooth pseudo-derivative backward.

The compiled LIF kernels compute the built-in surrogates by name (:data:`SURROGATES`); the PyTorch
reference of :mod:`tdsnn.ops.lif` calls :meth:`Surrogate.derivative`, so user subclasses run there.
Users import them from :mod:`tdsnn.neurons`.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from tdsnn.errors import ConfigError

__all__ = [
    "SURROGATES",
    "ATan",
    "FastSigmoid",
    "PiecewiseQuadratic",
    "Sigmoid",
    "Surrogate",
    "get_surrogate",
]


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
