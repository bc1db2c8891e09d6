"""A NIR graph in the peers: imported by spikingjelly's or snntorch's own NIR importer, run
step by step, spikes recorded at every LIF node.

:func:`load_peer` imports a graph (snntorch's ``import_from_nir``; spikingjelly's with ``dt``
from the graph's ``tdsnn.dt_s``) and :func:`peer_trace` runs the imported network from rest,
one step per call as nirtorch's graph executor takes them. Needs the ``bench`` and ``nir``
extras (``pip install 'tdsnn[bench,nir]'``).
"""

from __future__ import annotations

import contextlib
import copy
import io
from typing import NamedTuple

import torch
from torch import Tensor, nn

from tdsnn.errors import ConfigError
from tdsnn.nir.format import DT_S, PREFIX, lif_nodes, submodule_name
from tdsnn.peers.detect import split_output

__all__ = ["PEERS", "Trace", "load_peer", "peer_trace"]

PEERS = ("snntorch", "spikingjelly")


class Trace(NamedTuple):
    """One network run on T steps: ``inputs`` ``[T, B, C, H, W]``, spikes of every LIF layer
    ``[T, B, *]`` by NIR node name (= tdsnn module name), ``logits`` ``[B, classes]``."""

    inputs: Tensor
    spikes: dict[str, Tensor]
    logits: Tensor


def load_peer(graph, simulator: str, *, dtype: torch.dtype = torch.float32) -> nn.Module:
    """``graph`` imported by a peer simulator's own NIR importer (``PEERS``): snntorch's
    ``import_from_nir``, or spikingjelly's with ``dt`` from the graph's ``tdsnn.dt_s``."""
    graph = copy.deepcopy(graph)  # the importers rewrite edges and nodes in place
    if simulator == "snntorch":
        from snntorch.import_nir import import_from_nir

        with contextlib.redirect_stdout(io.StringIO()):  # it prints a warning per LIF layer
            net = import_from_nir(graph)
        return net.to(dtype)
    if simulator == "spikingjelly":
        from spikingjelly.activation_based.nir_exchange import import_from_nir

        dt = float((graph.metadata or {}).get(PREFIX + "dt_s", DT_S))
        return import_from_nir(graph, dt=dt, dtype=dtype, step_mode="s")
    raise ConfigError(f"unknown simulator {simulator!r}; expected one of {', '.join(PEERS)}")


@torch.no_grad()
def peer_trace(net: nn.Module, graph, inputs: Tensor) -> Trace:
    """Run a :func:`load_peer` network step by step on ``inputs`` ``[T, B, C, H, W]`` from
    rest; logits are the mean over T of the output, as tdsnn's."""
    spikes: dict[str, list[Tensor]] = {name: [] for name in lif_nodes(graph)}
    hooks = [
        net.get_submodule(submodule_name(name)).register_forward_hook(
            lambda _m, _a, out, name=name: spikes[name].append(split_output(out)[0].detach())
        )
        for name in spikes
    ]
    for module in net.modules():  # snntorch keeps the membrane inside the module
        if hasattr(module, "reset_mem"):
            module.reset_mem()
    try:
        state, outputs = None, []
        for x in inputs.unbind(0):
            out, state = net(x, state)
            outputs.append(out)
    finally:
        for hook in hooks:
            hook.remove()
    return Trace(
        inputs, {k: torch.stack(v) for k, v in spikes.items()}, torch.stack(outputs).mean(0)
    )
