"""A tdsnn ``LIF``'s dynamics as a spikingjelly or snntorch neuron, and a stack's neurons swapped.

:class:`SpikingJellyLIF` and :class:`SnnTorchLIF` are stateless multi-step modules
(``[T, *]`` current -> ``[T, *]`` spikes) with a given :class:`~tdsnn.neurons.LIF`'s parameters,
by the mapping of the :mod:`tdsnn.neurons` docstring. :func:`peer_modules` builds one per LIF of
a model and :func:`set_modules` puts them in place (and back): the peer variants of
``tdsnn bench`` are the same model object with other neurons, so weights, optimiser and data
are shared. Needs the ``bench`` extra (``pip install 'tdsnn[bench]'``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tdsnn.errors import ConfigError
from tdsnn.neurons import LIF
from tdsnn.peers.detect import import_peer

__all__ = [
    "NEURONS",
    "SnnTorchLIF",
    "SpikingJellyLIF",
    "lif_paths",
    "peer_modules",
    "set_modules",
    "spikingjelly_backend",
]


_SJ_SURROGATES = {"atan": "ATan", "sigmoid": "Sigmoid", "piecewise-quadratic": "PiecewiseQuadratic"}
_ST_SURROGATES = {
    "atan": ("atan", "alpha"),
    "sigmoid": ("sigmoid", "slope"),
    "fast-sigmoid": ("fast_sigmoid", "slope"),
}


class SpikingJellyLIF(nn.Module):
    """spikingjelly 2.0 ``LIFNode(step_mode='m')`` with a tdsnn ``LIF``'s parameters, stateless.

    ``[T, *]`` current -> ``[T, *]`` spikes in x's dtype. Each call runs
    ``functional.lif_multi_step`` (what ``LIFNode`` runs in multi-step mode) from a fresh
    float32 rest state, which is also the state dtype spikingjelly's fused CUDA path needs for
    bf16/fp16 inputs (``LIFNode`` itself would keep a bf16 state and fall back to its Torch
    reference). spikingjelly picks its CUDA implementation itself (native ``cuda`` if built,
    else ``triton``, else ``torch``; ``SJ_LIF_CUDA_IMPLEMENTATION`` overrides).
    """

    def __init__(self, lif: LIF):
        super().__init__()
        neuron = import_peer("spikingjelly.activation_based.neuron")
        surrogate = import_peer("spikingjelly.activation_based.surrogate")
        self._functional = import_peer("spikingjelly.activation_based.functional")
        lif = lif.params
        name = lif.surrogate.name
        if name not in _SJ_SURROGATES:
            raise ConfigError(f"surrogate {name!r} has no spikingjelly equivalent")
        if not lif.tau > 1:
            raise ConfigError(f"spikingjelly's LIFNode needs tau > 1, got {lif.tau}")
        self.node = neuron.LIFNode(
            tau=float(lif.tau),
            decay_input=lif.decay_input,
            v_threshold=float(lif.v_threshold),
            v_reset=None if lif.v_reset is None else float(lif.v_reset),
            surrogate_function=getattr(surrogate, _SJ_SURROGATES[name])(alpha=lif.surrogate.alpha),
            detach_reset=lif.detach_reset,
            step_mode="m",
        )

    def forward(self, x: Tensor, return_membrane: bool = False) -> Tensor:
        if return_membrane:
            raise ConfigError("the spikingjelly variant returns no membrane: use stc or none")
        n = self.node
        rest = 0.0 if n.v_reset is None else n.v_reset
        v0 = torch.full(x.shape[1:], rest, dtype=torch.float32, device=x.device)
        spikes, _, _ = self._functional.lif_multi_step(
            x,
            v0,
            n.tau,
            n.decay_input,
            n.v_threshold,
            n.v_reset,
            n.surrogate_function,
            n.detach_reset,
            False,
        )
        return spikes


class SnnTorchLIF(nn.Module):
    """snntorch 1.0 ``Leaky`` looped over T with a tdsnn ``LIF``'s dynamics, stateless.

    ``[T, *]`` -> ``[T, *]`` spikes. beta = 1 - 1/tau, threshold V_th, input scaled by 1/tau
    (``decay_input``), ``reset_mechanism='zero'`` and ``reset_delay=detach_reset``: the hard
    reset to 0 (the only reset with an exact ``Leaky`` equivalent, see :mod:`tdsnn.neurons`).
    """

    def __init__(self, lif: LIF):
        super().__init__()
        snntorch = import_peer("snntorch")
        surrogate = import_peer("snntorch.surrogate")
        lif = lif.params
        if lif.v_reset != 0.0:
            raise ConfigError("snntorch's Leaky matches tdsnn's LIF only for a hard reset to 0")
        name = lif.surrogate.name
        if name not in _ST_SURROGATES:
            raise ConfigError(f"surrogate {name!r} has no snntorch equivalent")
        fn, arg = _ST_SURROGATES[name]
        self.scale = 1.0 / lif.tau if lif.decay_input else 1.0
        self.leaky = snntorch.Leaky(
            beta=1.0 - 1.0 / lif.tau,
            threshold=float(lif.v_threshold),
            spike_grad=getattr(surrogate, fn)(**{arg: lif.surrogate.alpha}),
            reset_mechanism="zero",
            reset_delay=lif.detach_reset,
        )

    def forward(self, x: Tensor, return_membrane: bool = False) -> Tensor:
        if return_membrane:
            raise ConfigError("the snntorch variant returns no membrane: use stc or none")
        mem = self.leaky.reset_mem()
        spikes = []
        for x_t in (x * self.scale).unbind(0):
            spk, mem = self.leaky(x_t, mem)
            spikes.append(spk)
        return torch.stack(spikes).to(x.dtype)


NEURONS: dict[str, type[nn.Module]] = {"spikingjelly": SpikingJellyLIF, "snntorch": SnnTorchLIF}


def spikingjelly_backend(device: torch.device) -> str:
    """Which LIF implementation spikingjelly 2.0 runs on ``device`` (and why not the others)."""
    functional = import_peer("spikingjelly.activation_based.functional")
    if device.type != "cuda":
        return "torch (CPU)"
    info = functional.neuron_implementation("lif", device)
    unavailable = "; ".join(f"{k}: {v}" for k, v in info["unavailable"].items())
    return info["implementation"] + (f" (unavailable: {unavailable})" if unavailable else "")


def lif_paths(model: nn.Module) -> list[str]:
    """Dotted names of every tdsnn ``LIF`` module of ``model``."""
    return [name for name, m in model.named_modules() if isinstance(m, LIF)]


def peer_modules(model: nn.Module, peer: str, device: torch.device) -> dict[str, nn.Module]:
    """``{path: peer neuron}`` replacing each LIF of ``model`` (same parameters)."""
    return {path: NEURONS[peer](model.get_submodule(path)).to(device) for path in lif_paths(model)}


def set_modules(model: nn.Module, modules: dict[str, nn.Module]) -> None:
    """Put ``modules[path]`` at each dotted ``path`` of ``model``."""
    for path, module in modules.items():
        parent, _, attr = path.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, module)
