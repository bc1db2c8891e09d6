"""NIR -> tdsnn: NIR files read back with their sheets, and NIR graphs as tdsnn modules.

:func:`read_nir` reads a file into its ``nir.NIRGraph`` and one :class:`~tdsnn.sheet.Sheet` per
area (the layout of :mod:`tdsnn.nir.format`); :func:`from_nir` turns a feed-forward graph of
conv / affine / pooling / LIF nodes (tdsnn's, or one exported by snntorch) into a multi-step
:class:`NIRModule`, the inverse of :mod:`tdsnn.nir.writer`'s LIF mapping.

Needs the ``nir`` extra (``pip install 'tdsnn[nir]'``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from tdsnn.errors import ConfigError, DataError
from tdsnn.neurons import LIF, LIFParams
from tdsnn.nir.format import DT_S, PREFIX, area_nodes, plain, require_nir, submodule_name
from tdsnn.sheet import Sheet

__all__ = ["NIRModule", "NIRNetwork", "from_nir", "read_nir", "read_sheet"]


class NIRNetwork(NamedTuple):
    """A NIR file read by :func:`read_nir`: the graph and each area's sheet (positions in mm)."""

    graph: Any  # nir.NIRGraph
    sheets: dict[str, Sheet]


def read_nir(path: str | Path) -> NIRNetwork:
    """Read a NIR file; metadata strings come back as ``str``, scalars as Python scalars.

    Returns:
        :class:`NIRNetwork`: the ``nir.NIRGraph`` and, for a file written by tdsnn, one
        :class:`Sheet` per area (positions ``[N, 2]`` mm); files from elsewhere give no sheets.
    """
    nir = require_nir()
    path = Path(path)
    if not path.is_file():
        raise DataError(f"NIR file {path} does not exist")
    try:
        graph = nir.read(path)
    except Exception as exc:  # noqa: BLE001 - h5py/nir raise many types for a foreign file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"{path} is not a readable NIR file: {first}") from exc
    _decode_metadata(graph)
    found = area_nodes(graph)
    order = str(graph.metadata.get(PREFIX + "areas", "")).split(",")
    order = [a for a in order if a in found] + [a for a in found if a not in order]
    sheets = {}
    for area in order:
        sheets[area] = read_sheet(graph.nodes[found[area]].metadata, area)
    return NIRNetwork(graph, sheets)


def _decode_metadata(graph) -> None:
    graph.metadata = {k: plain(v) for k, v in (graph.metadata or {}).items()}
    for node in graph.nodes.values():
        if isinstance(getattr(node, "metadata", None), dict):
            node.metadata = {k: plain(v) for k, v in node.metadata.items()}


def _uniform(node_name: str, field_name: str, value) -> float:
    values = np.unique(np.asarray(value, dtype=np.float64))
    if values.size != 1:
        raise ConfigError(
            f"NIR import: node {node_name}: {field_name} differs between neurons; tdsnn's LIF "
            "takes one value per layer"
        )
    return float(values[0])


def _lif_from_nir(name: str, node, dt: float) -> LIF:
    """A NIR ``LIF`` as tdsnn's :class:`LIF` (inverting the mapping of :mod:`tdsnn.nir.format`)."""
    # 6 significant digits: a float32 tau (snntorch writes one) divided by dt is not exact
    tau_steps = float(f"{_uniform(name, 'tau', node.tau) / dt:.6g}")
    r = _uniform(name, "r", node.r)
    v_leak = _uniform(name, "v_leak", node.v_leak)
    v_reset = _uniform(name, "v_reset", node.v_reset)
    if not math.isclose(v_leak, v_reset, rel_tol=1e-6, abs_tol=1e-12):
        raise ConfigError(
            f"NIR import: node {name}: v_leak {v_leak} differs from v_reset {v_reset}; tdsnn's "
            "LIF leaks towards its reset potential"
        )
    if math.isclose(r, 1.0, rel_tol=1e-6):
        decay_input = True
    elif math.isclose(r, tau_steps, rel_tol=1e-6):
        decay_input = False
    else:
        raise ConfigError(
            f"NIR import: node {name}: r = {r} is neither 1 nor tau/dt = {tau_steps} (dt = {dt} "
            "s); tdsnn's LIF scales its input by 1/tau or by 1"
        )
    if tau_steps < 1 - 1e-9:
        raise ConfigError(f"NIR import: node {name}: tau/dt = {tau_steps} is below 1 step")
    threshold = _uniform(name, "v_threshold", node.v_threshold)
    return LIF(LIFParams(tau_steps, threshold, v_reset, decay_input))


class _Stateless(nn.Module):
    """A per-step layer run on every step at once: ``[T, B, *] -> [T, B, *']``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: Tensor) -> Tensor:
        t, b = x.shape[:2]
        return self.module(x.flatten(0, 1)).unflatten(0, (t, b))


class _Flatten(nn.Module):
    """NIR ``Flatten`` on ``[T, B, *]``: NIR counts dims from the first one after T and B."""

    def __init__(self, start_dim: int, end_dim: int) -> None:
        super().__init__()
        self.start_dim = start_dim if start_dim < 0 else start_dim + 2
        self.end_dim = end_dim if end_dim < 0 else end_dim + 2

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(self.start_dim, self.end_dim)


class NIRModule(nn.Module):
    """A feed-forward NIR graph as a multi-step tdsnn module: ``[T, B, *in] -> [T, B, *out]``.

    Every NIR node is a submodule of ``layers`` under its name with dots as underscores; LIF
    nodes are tdsnn :class:`LIF` layers (so :class:`~tdsnn.interop.TopoRegularizer` finds and
    records them), each starting from rest at every call. ``sheets`` maps module names
    (``layers.<node>``) to the sheets a tdsnn file carries; :meth:`regularizer` attaches them.
    """

    def __init__(self, graph, dt: float) -> None:
        super().__init__()
        from graphlib import CycleError, TopologicalSorter

        nir = require_nir()
        self.layers = nn.ModuleDict()
        self._sources: dict[str, list[str]] = {}
        for src, dst in graph.edges:
            self._sources.setdefault(dst, []).append(src)
        sorter = TopologicalSorter({name: self._sources.get(name, []) for name in graph.nodes})
        try:
            order = list(sorter.static_order())
        except CycleError as exc:
            raise ConfigError(
                "NIR import: the graph has recurrent edges; tdsnn imports feed-forward graphs"
            ) from exc
        self._order = [name for name in order if name in graph.nodes]
        inputs = [n for n, node in graph.nodes.items() if isinstance(node, nir.Input)]
        outputs = [n for n, node in graph.nodes.items() if isinstance(node, nir.Output)]
        if len(inputs) != 1 or len(outputs) != 1:
            raise ConfigError(
                f"NIR import: the graph needs one Input and one Output node, has {len(inputs)} "
                f"and {len(outputs)}"
            )
        self._input, self._output = inputs[0], outputs[0]
        self._keys = {name: submodule_name(name) for name in graph.nodes}
        self.sheets: dict[str, Sheet] = {}
        with_sheets = set(area_nodes(graph).values())
        for name, node in graph.nodes.items():
            if name in (self._input, self._output):
                continue
            self.layers[self._keys[name]] = self._layer(nir, name, node, dt)
            if name in with_sheets:
                key = f"layers.{self._keys[name]}"  # TopoRegularizer's name for the layer
                self.sheets[key] = read_sheet(node.metadata, key)

    @staticmethod
    def _layer(nir, name: str, node, dt: float) -> nn.Module:
        def array(value) -> Tensor:
            return torch.as_tensor(np.asarray(value, dtype=np.float32))

        if isinstance(node, nir.LIF):
            return _lif_from_nir(name, node, dt)
        if isinstance(node, nir.Conv2d):
            weight = array(node.weight)
            conv = nn.Conv2d(
                weight.shape[1] * int(node.groups),
                weight.shape[0],
                tuple(weight.shape[2:]),
                stride=tuple(int(s) for s in np.broadcast_to(node.stride, 2)),
                padding=node.padding
                if isinstance(node.padding, str)
                else tuple(int(p) for p in np.broadcast_to(node.padding, 2)),
                dilation=tuple(int(d) for d in np.broadcast_to(node.dilation, 2)),
                groups=int(node.groups),
            )
            conv.weight.data.copy_(weight)
            conv.bias.data.copy_(array(node.bias))
            return _Stateless(conv)
        if isinstance(node, (nir.Affine, nir.Linear)):
            weight = array(node.weight)
            linear = nn.Linear(weight.shape[1], weight.shape[0], bias=isinstance(node, nir.Affine))
            linear.weight.data.copy_(weight)
            if isinstance(node, nir.Affine):
                linear.bias.data.copy_(array(node.bias))
            return _Stateless(linear)
        if isinstance(node, nir.AvgPool2d):
            pool = nn.AvgPool2d(
                tuple(int(k) for k in np.broadcast_to(node.kernel_size, 2)),
                tuple(int(s) for s in np.broadcast_to(node.stride, 2)),
                tuple(int(p) for p in np.broadcast_to(node.padding, 2)),
            )
            return _Stateless(pool)
        if isinstance(node, nir.Flatten):
            return _Flatten(int(node.start_dim), int(node.end_dim))
        raise ConfigError(
            f"NIR import: node {name} is a {type(node).__name__}; tdsnn imports Conv2d, Affine, "
            "Linear, AvgPool2d, Flatten and LIF nodes"
        )

    def forward(self, x: Tensor) -> Tensor:
        """``x`` ``[T, B, *in]`` -> the output node's input ``[T, B, *out]``."""
        values: dict[str, Tensor] = {self._input: x}
        for name in self._order:
            if name == self._input:
                continue
            sources = self._sources.get(name, [])
            if not sources:
                raise ConfigError(f"NIR import: node {name} has no input")
            total = values[sources[0]]
            for src in sources[1:]:
                total = total + values[src]
            values[name] = total if name == self._output else self.layers[self._keys[name]](total)
        return values[self._output]

    def regularizer(self, preset: str = "stc", **kwargs):
        """A :class:`~tdsnn.interop.TopoRegularizer` on every LIF layer, with this module's
        ``sheets`` (from the file) in place of new ones for the layers that have them."""
        from tdsnn.interop import TopoRegularizer

        topo = TopoRegularizer(self, preset, **kwargs)
        if self.sheets:
            topo.load_state_dict({"sheets": {k: s.state_dict() for k, s in self.sheets.items()}})
        return topo


def read_sheet(metadata: Mapping[str, Any], area: str) -> Sheet:
    """The :class:`Sheet` in a LIF node's metadata (the keys of :mod:`tdsnn.nir.format`)."""
    try:
        return Sheet(
            area=area,
            shape=tuple(int(s) for s in np.asarray(metadata[PREFIX + "unit_shape"])),
            side_mm=float(plain(metadata[PREFIX + "sheet_mm"])),
            neighbourhood_mm=float(plain(metadata[PREFIX + "neighbourhood_mm"])),
            layout=str(plain(metadata[PREFIX + "layout"])),
            positions=torch.from_numpy(np.asarray(metadata[PREFIX + "positions_mm"], np.float32)),
            optimized=bool(plain(metadata[PREFIX + "positions_optimized"])),
        )
    except KeyError as exc:
        raise ConfigError(f"NIR file: the sheet of area {area} lacks {exc.args[0]}") from exc


def from_nir(source, *, dt: float | None = None) -> NIRModule:
    """A NIR graph (or file) of conv / affine / pooling / LIF nodes as a tdsnn
    :class:`NIRModule`, e.g. one exported by snntorch's ``export_to_nir``.

    ``dt`` (seconds per step) turns NIR's ``tau`` into steps (tau/dt, to 6 significant
    digits); default: the file's ``tdsnn.dt_s``, else :data:`DT_S` (snntorch's). tdsnn fires
    on H >= v_threshold where NIR says v > v_threshold: the imported network differs from the
    graph only at exact ties.
    """
    if isinstance(source, (str, Path)):
        graph = read_nir(source).graph
    else:
        graph = source
        _decode_metadata(graph)
    if dt is None:
        dt = float((graph.metadata or {}).get(PREFIX + "dt_s", DT_S))
    return NIRModule(graph, dt)
