"""Which framework a spiking layer belongs to, and what one call of it gives.

spikingjelly ``BaseNode`` subclasses (``LIFNode``, ``IFNode``, …), snntorch ``SpikingNeuron``
subclasses (``Leaky``, ``Synaptic``, …) and tdsnn's own :class:`~tdsnn.neurons.LIF` are
recognised by class name and module, so neither peer is imported here. :func:`import_peer`
imports one on demand, or says which extra installs it.
"""

from __future__ import annotations

from torch import Tensor, nn

from tdsnn.errors import MissingPackageError, import_optional
from tdsnn.neurons import LIF

__all__ = [
    "PeerMissing",
    "framework",
    "import_peer",
    "is_multistep",
    "spikes_and_membrane",
    "spiking_layers",
    "split_output",
]


class PeerMissing(MissingPackageError):
    """An optional peer simulator (spikingjelly, snntorch) is not installed."""


def import_peer(module: str) -> object:
    """Import ``module`` of an optional peer package, or raise :class:`PeerMissing`."""
    return import_optional(module, "bench", "the bench comparison", PeerMissing)


def _class_names(module: nn.Module) -> list[tuple[str, str]]:
    """``(top-level package, class name)`` of every class in ``type(module)``'s MRO."""
    return [(cls.__module__.split(".")[0], cls.__name__) for cls in type(module).__mro__]


def framework(module: nn.Module) -> str | None:
    """``"spikingjelly"``, ``"snntorch"`` or ``"tdsnn"`` for a recognised spiking neuron."""
    if isinstance(module, LIF):
        return "tdsnn"
    names = _class_names(module)
    if ("spikingjelly", "BaseNode") in names:
        return "spikingjelly"
    if ("snntorch", "SpikingNeuron") in names:
        return "snntorch"
    return None


def spiking_layers(net: nn.Module) -> dict[str, nn.Module]:
    """Spiking neuron layers of ``net`` in ``named_modules()`` order: ``{name: module}``.

    Recognised: spikingjelly ``BaseNode`` subclasses, snntorch ``SpikingNeuron`` subclasses and
    :class:`tdsnn.neurons.LIF`.
    """
    return {name: m for name, m in net.named_modules() if framework(m) is not None}


def is_multistep(module: nn.Module) -> bool:
    """Whether one call of ``module`` processes a whole ``[T, B, ...]`` sequence."""
    step_mode = getattr(module, "step_mode", None)
    if step_mode in ("s", "m"):  # spikingjelly StepModule (and anything that copies it)
        return step_mode == "m"
    if framework(module) == "snntorch":
        return type(module).__name__ == "StateLeaky"
    return True


def split_output(output) -> tuple[Tensor, Tensor | None]:
    """``(spikes, membrane or None)`` of a neuron's return value (tensor or tuple)."""
    if isinstance(output, (tuple, list)):
        if len(output) == 0:
            return output, None
        return output[0], (output[-1] if len(output) > 1 else None)
    return output, None


def spikes_and_membrane(module: nn.Module, output, multistep: bool) -> tuple[Tensor, Tensor | None]:
    """Spikes and membrane (or None) of one call of a spiking layer that returned ``output``.

    A tuple contributes ``output[0]`` as spikes and ``output[-1]`` as membrane (snntorch's
    ``(spk, mem)``, ``Synaptic``'s ``(spk, syn, mem)``, tdsnn ``LIF(..., return_membrane=True)``).
    A spikingjelly neuron built with ``store_v_seq=True`` gives its ``v_seq`` after a
    multi-step call and ``v`` after a single step: V **after** the reset. A membrane that is
    not a tensor of the spikes' shape is None.
    """
    spikes, v = split_output(output)
    if getattr(module, "store_v_seq", False):  # spikingjelly: V after reset
        v = module.v_seq if multistep else module.v
    if not isinstance(spikes, Tensor) or not isinstance(v, Tensor) or v.shape != spikes.shape:
        v = None
    return spikes, v
