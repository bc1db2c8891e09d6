"""Trained networks as NIR graphs (``tdsnn export RUN_DIR --format nir``), with cortical positions.

NIR, the Neuromorphic Intermediate Representation (package ``nir``), is how snntorch,
spikingjelly, norse and neuromorphic hardware tool chains exchange networks. :func:`nir_graph`
turns an :class:`~tdsnn.areas.AreaStack` and its sheets into a ``nir.NIRGraph``;
:func:`write_nir` writes it atomically; :func:`read_nir` reads a file back into the graph and
one :class:`~tdsnn.sheet.Sheet` per area. :func:`export_run` is the command.
:func:`round_trip` runs a graph in a peer simulator through that simulator's own NIR importer
and compares its spikes and logits with tdsnn's (``tdsnn export --verify``); :func:`from_nir`
goes the other way, a NIR graph as a tdsnn module.

The graph
---------
One step of the network, fed the input of that step (``[C, H, W]``; shapes exclude the batch):

- node names are tdsnn's module names (``stem``, ``stem_lif``, ``areas.V1.blocks.0.conv1``, …);
- ``Conv2d`` per conv + batch norm, the batch norm folded in with its running statistics:
  weight ``W·γ/√(σ²+ε)``, bias ``β − μ·γ/√(σ²+ε)`` (the network of ``model.eval()``);
- ``LIF`` per layer of neurons, parameters as arrays of the layer's shape;
- a residual sum is two edges into one ``LIF`` (NIR sums a node's inputs): from ``conv2`` and
  from the shortcut (a ``Conv2d`` of the 1×1 conv + batch norm, or the block's input itself);
- the readout is ``AvgPool2d`` over the whole map, ``Flatten`` and ``Affine`` (the classifier);
  with ``model.readout: fc``, first ``AvgPool2d``, ``Flatten``, ``Affine`` and the ``LIF`` units of
  the ``readout`` layer. tdsnn's logits are the **mean over the T steps** of the ``output`` node.

LIF mapping
-----------
NIR's LIF is continuous: τ·dv/dt = (v_leak − v) + r·I, spike when v > v_threshold, then
v = v_reset. Simulated with forward Euler at step ``dt`` seconds it is
v[t] = v[t−1] + (dt/τ)·(v_leak − v[t−1] + r·I[t]). tdsnn's update (:mod:`tdsnn.neurons`) with
τ_s steps is this with

- ``tau`` = τ_s·dt, ``v_leak`` = ``v_reset`` = V_reset, ``v_threshold`` = V_th;
- ``r`` = 1 for ``decay_input=True`` (H = V + (X − (V − V_reset))/τ_s) and r = τ_s for
  ``decay_input=False`` (H = V − (V − V_reset)/τ_s + X).

``dt`` defaults to :data:`DT_S` = 1e-4 s, the step snntorch's importer fixes and the default
of spikingjelly's. tdsnn fires on H ≥ V_th, NIR on v > v_threshold: the two differ only
when H equals V_th exactly. A soft reset (``v_reset: null``, V −= V_th) has no NIR neuron and is
refused, as are ReLU units (NIR has no ReLU node). The surrogate gradient and ``detach_reset``
change training only: they are recorded in metadata and do not block the export.

Metadata keys (documented in the README)
----------------------------------------
Graph: ``tdsnn.format`` (= :data:`NIR_FORMAT`), ``tdsnn.format_version``, ``tdsnn.version``,
``tdsnn.area_stack``, ``tdsnn.areas`` (comma-separated, in order), ``tdsnn.timesteps``,
``tdsnn.encoding``, ``tdsnn.dt_s``, ``tdsnn.num_classes``, ``tdsnn.logits``, ``tdsnn.input``.
Every node: ``tdsnn.module``. Conv2d: ``tdsnn.batch_norm_folded``, ``tdsnn.batch_norm_eps``.
LIF: ``tdsnn.dt_s``, ``tdsnn.tau_steps``, ``tdsnn.decay_input``, ``tdsnn.v_threshold``,
``tdsnn.v_reset``, ``tdsnn.reset`` (``hard``), ``tdsnn.fire`` (``H >= v_threshold``),
``tdsnn.update``, ``tdsnn.surrogate``, ``tdsnn.surrogate_alpha``, ``tdsnn.detach_reset``.
The LIF node of an area's output units also: ``tdsnn.area``, ``tdsnn.unit_shape`` ``[3]``
(C, H, W), ``tdsnn.positions_mm`` ``[N, 2]`` float32 (x, y) in mm, row u = c·H·W + h·W + w (the
row-major index into the node's ``[C, H, W]``), ``tdsnn.sheet_mm``, ``tdsnn.neighbourhood_mm``,
``tdsnn.layout``, ``tdsnn.positions_optimized``.

Needs the ``nir`` extra (``pip install 'tdsnn[nir]'``).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

import tdsnn
from tdsnn.areas import AreaStack, FCReadout, ReLUUnits, SeqConvBN, SpikingBlock
from tdsnn.errors import ConfigError, DataError, import_optional
from tdsnn.neurons import LIF
from tdsnn.sheet import Sheet

__all__ = [
    "DT_S",
    "NIR_FORMAT",
    "PEERS",
    "ExportResult",
    "LayerAgreement",
    "NIRModule",
    "NIRNetwork",
    "RoundTrip",
    "Trace",
    "area_nodes",
    "compare_traces",
    "export_run",
    "from_nir",
    "lif_nodes",
    "load_peer",
    "nir_graph",
    "peer_trace",
    "read_nir",
    "read_sheet",
    "round_trip",
    "tdsnn_trace",
    "verify_export",
    "write_nir",
]

DT_S = 1e-4  # seconds per step the exported LIF time constants assume (snntorch's fixed dt)
NIR_FORMAT = "tdsnn-nir"
NIR_FORMAT_VERSION = 1
_P = "tdsnn."  # prefix of every metadata key tdsnn writes


def _require_nir():
    return import_optional("nir", "nir", "NIR export")


def _unsupported(layer: str, what: str) -> ConfigError:
    return ConfigError(f"NIR export: layer {layer} ({what}) cannot be expressed in NIR")


# --------------------------------------------------------------------------- graph


class _Builder:
    """Collects NIR nodes and edges, tracking each node's output shape ``(C, H, W)``/``(N,)``."""

    def __init__(self, nir, dtype: np.dtype, dt: float) -> None:
        self.nir = nir
        self.dtype = dtype
        self.dt = dt
        self.nodes: dict[str, Any] = {}
        self.edges: list[tuple[str, str]] = []
        self.shapes: dict[str, tuple[int, ...]] = {}

    def add(self, name: str, node, sources: list[str], shape: tuple[int, ...]) -> str:
        self.nodes[name] = node
        self.edges += [(src, name) for src in sources]
        self.shapes[name] = tuple(int(s) for s in shape)
        return name

    def conv_bn(self, name: str, module: nn.Module, source: str) -> str:
        """``SeqConvBN`` -> one ``Conv2d`` with the batch norm folded in."""
        if type(module) is not SeqConvBN:
            raise _unsupported(name, type(module).__name__)
        conv, bn = module.conv, module.bn
        if type(conv) is not nn.Conv2d or type(bn) is not nn.BatchNorm2d:
            raise _unsupported(name, f"{type(conv).__name__} + {type(bn).__name__}")
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise _unsupported(name, f"padding {conv.padding!r} mode {conv.padding_mode!r}")
        if bn.running_mean is None or bn.running_var is None:
            raise _unsupported(name, "batch norm without running statistics")
        c_in, h, w = self.shapes[source]
        if c_in != conv.in_channels:
            raise _unsupported(name, f"{conv.in_channels} input channels, {c_in} arrive")
        # Fold in float64, round once to the export dtype.
        weight = conv.weight.detach().cpu().double()
        bias = (
            conv.bias.detach().cpu().double()
            if conv.bias is not None
            else torch.zeros(conv.out_channels, dtype=torch.float64)
        )
        gamma = bn.weight.detach().cpu().double() if bn.affine else torch.ones_like(bias)
        beta = bn.bias.detach().cpu().double() if bn.affine else torch.zeros_like(bias)
        scale = gamma / torch.sqrt(bn.running_var.detach().cpu().double() + bn.eps)
        mean = bn.running_mean.detach().cpu().double()
        node = self.nir.Conv2d(
            input_shape=(h, w),
            weight=(weight * scale[:, None, None, None]).numpy().astype(self.dtype),
            stride=tuple(int(s) for s in conv.stride),
            padding=tuple(int(p) for p in conv.padding),
            dilation=tuple(int(d) for d in conv.dilation),
            groups=int(conv.groups),
            bias=((bias - mean) * scale + beta).numpy().astype(self.dtype),
            metadata={
                _P + "module": name,
                _P + "batch_norm_folded": True,
                _P + "batch_norm_eps": float(bn.eps),
            },
        )
        shape = tuple(int(s) for s in node.output_type["output"])
        return self.add(name, node, [source], shape)

    def lif(self, name: str, module: nn.Module, sources: list[str]) -> str:
        """tdsnn ``LIF`` -> NIR ``LIF`` with the mapping of the module docstring."""
        if isinstance(module, ReLUUnits):
            raise _unsupported(name, "ReLU units: NIR has no ReLU node")
        if type(module) is not LIF:
            raise _unsupported(name, type(module).__name__)
        if module.v_reset is None:
            raise _unsupported(
                name, "soft reset V -= V_th: NIR's LIF resets to v_reset; train with v_reset 0.0"
            )
        shapes = {self.shapes[s] for s in sources}
        if len(shapes) != 1:
            raise _unsupported(name, f"inputs of different shapes {sorted(shapes)}")
        shape = shapes.pop()
        tau_steps = float(module.tau)
        full = np.ones(shape, dtype=np.float64)  # neuron parameters in float64: dt·τ_s is exact
        node = self.nir.LIF(
            tau=full * (tau_steps * self.dt),
            r=full * (1.0 if module.decay_input else tau_steps),
            v_leak=full * float(module.v_reset),
            v_threshold=full * float(module.v_threshold),
            v_reset=full * float(module.v_reset),
            metadata={
                _P + "module": name,
                _P + "dt_s": self.dt,
                _P + "tau_steps": tau_steps,
                _P + "decay_input": bool(module.decay_input),
                _P + "v_threshold": float(module.v_threshold),
                _P + "v_reset": float(module.v_reset),
                _P + "reset": "hard",
                _P + "fire": "H >= v_threshold",
                _P + "update": (
                    "H[t] = V[t-1] + (X[t] - (V[t-1] - v_reset)) / tau_steps"
                    if module.decay_input
                    else "H[t] = V[t-1] - (V[t-1] - v_reset) / tau_steps + X[t]"
                )
                + "; S[t] = H[t] >= v_threshold; V[t] = v_reset if S[t] else H[t]; V[0] = "
                "v_reset. Forward Euler of the NIR LIF with dt = tdsnn.dt_s seconds",
                _P + "surrogate": module.surrogate.name,
                _P + "surrogate_alpha": float(module.surrogate.alpha),
                _P + "detach_reset": bool(module.detach_reset),
            },
        )
        return self.add(name, node, sources, shape)

    def global_pool(self, prefix: str, source: str) -> str:
        """``AvgPool2d`` over the whole ``[C, H, W]`` map, then ``Flatten`` to ``[C]``."""
        c, h, w = self.shapes[source]
        pool = self.nir.AvgPool2d(
            kernel_size=np.array([h, w]), stride=np.array([h, w]), padding=np.array([0, 0])
        )
        self.add(f"{prefix}pool", pool, [source], (c, 1, 1))
        flat = self.nir.Flatten(
            input_type={"input": np.array([c, 1, 1])},
            start_dim=-3,
            end_dim=-1,
            metadata={_P + "module": f"{prefix}flatten"},
        )
        return self.add(f"{prefix}flatten", flat, [f"{prefix}pool"], (c,))

    def affine(self, name: str, module: nn.Module, source: str) -> str:
        if type(module) is not nn.Linear or module.bias is None:
            raise _unsupported(name, type(module).__name__)
        (features,) = self.shapes[source]
        if features != module.in_features:
            raise _unsupported(name, f"{module.in_features} inputs, {features} arrive")
        node = self.nir.Affine(
            weight=module.weight.detach().cpu().numpy().astype(self.dtype),
            bias=module.bias.detach().cpu().numpy().astype(self.dtype),
            metadata={_P + "module": name},
        )
        return self.add(name, node, [source], (module.out_features,))


def _image_hw(
    model: AreaStack, sheets: Mapping[str, Sheet], image_size: int | tuple[int, int] | None
) -> tuple[int, int]:
    """The input's ``(H, W)``: ``image_size``, or the first area's map when its stride is 1."""
    if image_size is not None:
        return (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    first = model.area_names[0]
    area = model.areas[first]
    if area.spec.stride == 1 and first in sheets:
        _, h, w = sheets[first].shape
        return h, w
    raise ConfigError(
        f"nir_graph: the input size cannot be read from the sheets of {first} (stride "
        f"{area.spec.stride}); pass image_size"
    )


def nir_graph(
    model: AreaStack,
    sheets: Mapping[str, Sheet],
    *,
    image_size: int | tuple[int, int] | None = None,
    dt: float = DT_S,
    dtype: np.dtype | type = np.float32,
):
    """``model`` (its eval-mode network) as a ``nir.NIRGraph`` carrying its areas' sheets.

    Args:
        model: a LIF area stack (hard reset). ReLU units and soft reset raise ``ConfigError``
            naming the layer.
        sheets: area name -> :class:`Sheet`, one per area of ``model`` (``load_run``'s sheets).
        image_size: input side (or ``(H, W)``) in pixels; read from the first area's sheet
            when that area has stride 1.
        dt: seconds per step; LIF ``tau`` = tau_steps·dt (see the module docstring).
        dtype: dtype of weights and biases (float32, or float64 for an exact check).

    Returns:
        a ``nir.NIRGraph``: input ``[C, H, W]`` per step, output ``[classes]`` per step.
    """
    nir = _require_nir()
    if not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
        raise ConfigError(f"nir_graph: dt must be a positive number of seconds, got {dt!r}")
    if not isinstance(model, AreaStack):
        raise ConfigError(f"nir_graph exports a tdsnn AreaStack, got {type(model).__name__}")
    missing = [name for name in model.area_names if name not in sheets]
    if missing:
        raise ConfigError(f"nir_graph: no sheet for areas {missing} (has {sorted(sheets)})")
    h, w = _image_hw(model, sheets, image_size)
    b = _Builder(nir, np.dtype(dtype), float(dt))
    c_in = model.stem.conv.in_channels
    b.add("input", nir.Input(input_type=np.array([c_in, h, w])), [], (c_in, h, w))
    prev = b.conv_bn("stem", model.stem, "input")
    prev = b.lif("stem_lif", model.stem_lif, [prev])
    area_of_node: dict[str, str] = {}
    for area_name, area in model.areas.items():
        base = f"areas.{area_name}"
        if isinstance(area, FCReadout):
            flat = b.global_pool(f"{base}.", prev)
            fc = b.affine(f"{base}.fc", area.fc, flat)
            prev = b.lif(f"{base}.units", area.units, [fc])
        else:
            for i, block in enumerate(area.blocks):
                name = f"{base}.blocks.{i}"
                if type(block) is not SpikingBlock:
                    raise _unsupported(name, type(block).__name__)
                c1 = b.conv_bn(f"{name}.conv1", block.conv1, prev)
                s1 = b.lif(f"{name}.lif1", block.lif1, [c1])
                c2 = b.conv_bn(f"{name}.conv2", block.conv2, s1)
                if isinstance(block.shortcut, nn.Identity):
                    shortcut = prev
                else:
                    shortcut = b.conv_bn(f"{name}.shortcut", block.shortcut, prev)
                prev = b.lif(f"{name}.lif2", block.lif2, [c2, shortcut])
        area_of_node[prev] = area_name
        _attach_sheet(b.nodes[prev], sheets[area_name], b.shapes[prev], area_name)
    if not isinstance(model.dropout, (nn.Identity, nn.Dropout)):
        raise _unsupported("dropout", type(model.dropout).__name__)
    if b.shapes[prev] != (model.readout.in_features,):
        prev = b.global_pool("", prev)
    prev = b.affine("readout", model.readout, prev)
    out_shape = b.shapes[prev]
    b.add("output", nir.Output(output_type=np.array(out_shape)), [prev], out_shape)
    config = model.config
    metadata = {
        _P + "format": NIR_FORMAT,
        _P + "format_version": NIR_FORMAT_VERSION,
        _P + "version": tdsnn.__version__,
        _P + "area_stack": "-".join(model.area_names),
        _P + "areas": ",".join(model.area_names),
        _P + "timesteps": int(config.timesteps),
        _P + "encoding": str(config.encoding),
        _P + "dt_s": float(dt),
        _P + "num_classes": int(model.readout.out_features),
        _P + "logits": "tdsnn's logits are the mean over the T steps of the output node",
        _P + "input": (
            "the image [C, H, W] in [0, 1], the same at every one of the T steps"
            if config.encoding == "direct"
            else f"the image coded as {config.encoding} spikes [C, H, W] at each of the T steps"
        ),
    }
    return nir.NIRGraph(nodes=b.nodes, edges=b.edges, metadata=metadata)


def _attach_sheet(node, sheet: Sheet, shape: tuple[int, ...], area: str) -> None:
    """Put ``sheet`` into the metadata of the LIF ``node`` of ``area``'s output units."""
    n = int(np.prod(shape))
    if sheet.num_units != n:
        raise ConfigError(
            f"nir_graph: the sheet of {area} has {sheet.num_units} units of shape "
            f"{sheet.shape}, the layer has {n} of shape {shape}"
        )
    node.metadata.update(
        {
            _P + "area": area,
            _P + "unit_shape": np.asarray(sheet.shape, dtype=np.int64),
            _P + "positions_mm": sheet.positions.numpy().astype(np.float32),
            _P + "sheet_mm": float(sheet.side_mm),
            _P + "neighbourhood_mm": float(sheet.neighbourhood_mm),
            _P + "layout": str(sheet.layout),
            _P + "positions_optimized": bool(sheet.optimized),
        }
    )


def lif_nodes(graph) -> list[str]:
    """Names of the graph's ``LIF`` nodes, in the order they were added (input to output)."""
    nir = _require_nir()
    return [name for name, node in graph.nodes.items() if isinstance(node, nir.LIF)]


def area_nodes(graph) -> dict[str, str]:
    """Area name -> name of the LIF node of that area's output units, in stack order."""
    found = {}
    for name, node in graph.nodes.items():
        area = _plain(node.metadata.get(_P + "area")) if node.metadata else None
        if area is not None:
            found[str(area)] = name
    return found


# --------------------------------------------------------------------------- files


class NIRNetwork(NamedTuple):
    """A NIR file read by :func:`read_nir`: the graph and each area's sheet (positions in mm)."""

    graph: Any  # nir.NIRGraph
    sheets: dict[str, Sheet]


def _plain(value):
    """A metadata value as written: bytes -> str, numpy scalars -> Python scalars."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_nir(graph, path: str | Path) -> Path:
    """Write ``graph`` to ``path`` (HDF5, ``nir.write``) through a temporary file beside it, so
    ``path`` only ever holds a complete file; an OS failure is a one-line ``ConfigError``."""
    nir = _require_nir()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        nir.write(tmp, graph)
        os.replace(tmp, path)
    except OSError as exc:
        reason = exc.strerror or str(exc).splitlines()[0]
        raise ConfigError(f"cannot write {path}: {reason}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_nir(path: str | Path) -> NIRNetwork:
    """Read a NIR file; metadata strings come back as ``str``, scalars as Python scalars.

    Returns:
        :class:`NIRNetwork`: the ``nir.NIRGraph`` and, for a file written by tdsnn, one
        :class:`Sheet` per area (positions ``[N, 2]`` mm); files from elsewhere give no sheets.
    """
    nir = _require_nir()
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
    order = str(graph.metadata.get(_P + "areas", "")).split(",")
    order = [a for a in order if a in found] + [a for a in found if a not in order]
    sheets = {}
    for area in order:
        sheets[area] = read_sheet(graph.nodes[found[area]].metadata, area)
    return NIRNetwork(graph, sheets)


def _decode_metadata(graph) -> None:
    graph.metadata = {k: _plain(v) for k, v in (graph.metadata or {}).items()}
    for node in graph.nodes.values():
        if isinstance(getattr(node, "metadata", None), dict):
            node.metadata = {k: _plain(v) for k, v in node.metadata.items()}


# --------------------------------------------------------------------------- command


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_run` wrote: the file, its size (bytes) and the seconds it took."""

    path: Path
    size_bytes: int
    seconds: float


def export_run(
    run_dir: str | Path, out: str | Path, *, which: str = "best", overwrite: bool = False
) -> ExportResult:
    """``tdsnn export RUN_DIR --format nir``: checkpoint ``which`` of ``run_dir`` as a NIR file.

    Every check (``out``, the checkpoint, what NIR can express) runs before anything is
    written, and the file appears only once complete.
    """
    from tdsnn.record.recorder import check_output
    from tdsnn.rundir import load_run

    _require_nir()
    out = Path(out)
    check_output(out, overwrite)
    if not os.access(out.parent, os.W_OK):
        raise ConfigError(f"out {out}: the folder {out.parent} is not writable")
    start = time.perf_counter()
    trained = load_run(run_dir, which)
    graph = nir_graph(trained.model, trained.sheets, image_size=trained.config.data.image_size)
    write_nir(graph, out)
    seconds = time.perf_counter() - start
    return ExportResult(out, out.stat().st_size, seconds)


# --------------------------------------------------------------------------- round trips

PEERS = ("snntorch", "spikingjelly")


class Trace(NamedTuple):
    """One network run on T steps: ``inputs`` ``[T, B, C, H, W]``, spikes of every LIF layer
    ``[T, B, *]`` by NIR node name (= tdsnn module name), ``logits`` ``[B, classes]``."""

    inputs: Tensor
    spikes: dict[str, Tensor]
    logits: Tensor


def _first(output):
    return output[0] if isinstance(output, tuple) else output


@torch.no_grad()
def tdsnn_trace(model: AreaStack, images: Tensor, *, seed: int = 0) -> Trace:
    """Run ``model`` on ``images`` ``[B, C, H, W]``, recording every LIF layer's spikes.

    ``inputs`` is what the graph's input node receives at each step: the image for direct
    encoding, the coded spikes (drawn under ``seed``, the same draws the model used) otherwise.
    """
    spikes: dict[str, Tensor] = {}
    hooks = [
        module.register_forward_hook(
            lambda _m, _a, out, name=name: spikes.__setitem__(name, _first(out).detach())
        )
        for name, module in model.named_modules()
        if isinstance(module, (LIF, ReLUUnits))
    ]
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            inputs = model.encode(images)
            torch.manual_seed(seed)
            logits = model(images).logits
    finally:
        for hook in hooks:
            hook.remove()
    return Trace(inputs, spikes, logits)


def _sanitize(name: str) -> str:
    """The submodule name nirtorch gives NIR node ``name`` (dots become underscores)."""
    import keyword

    name = name.replace(".", "_")
    return "nir_node_" + name if keyword.iskeyword(name) else name


def load_peer(graph, simulator: str, *, dtype: torch.dtype = torch.float32) -> nn.Module:
    """``graph`` imported by a peer simulator's own NIR importer (``PEERS``): snntorch's
    ``import_from_nir``, or spikingjelly's with ``dt`` from the graph's ``tdsnn.dt_s``."""
    import contextlib
    import copy
    import io

    graph = copy.deepcopy(graph)  # the importers rewrite edges and nodes in place
    if simulator == "snntorch":
        from snntorch.import_nir import import_from_nir

        with contextlib.redirect_stdout(io.StringIO()):  # it prints a warning per LIF layer
            net = import_from_nir(graph)
        return net.to(dtype)
    if simulator == "spikingjelly":
        from spikingjelly.activation_based.nir_exchange import import_from_nir

        dt = float((graph.metadata or {}).get(_P + "dt_s", DT_S))
        return import_from_nir(graph, dt=dt, dtype=dtype, step_mode="s")
    raise ConfigError(f"unknown simulator {simulator!r}; expected one of {', '.join(PEERS)}")


@torch.no_grad()
def peer_trace(net: nn.Module, graph, inputs: Tensor) -> Trace:
    """Run a :func:`load_peer` network step by step on ``inputs`` ``[T, B, C, H, W]`` from
    rest; logits are the mean over T of the output, as tdsnn's."""
    spikes: dict[str, list[Tensor]] = {name: [] for name in lif_nodes(graph)}
    hooks = [
        net.get_submodule(_sanitize(name)).register_forward_hook(
            lambda _m, _a, out, name=name: spikes[name].append(_first(out).detach())
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


@dataclass(frozen=True)
class LayerAgreement:
    """Spikes of one LIF layer in two runs: ``values`` compared, ``mismatches`` differing,
    ``first_step`` the first step (0-based) with a difference, or None."""

    layer: str
    values: int
    mismatches: int
    first_step: int | None


@dataclass(frozen=True)
class RoundTrip:
    """How a peer's run of the exported graph agrees with tdsnn's on the same inputs."""

    simulator: str
    images: int
    timesteps: int
    layers: tuple[LayerAgreement, ...]  # in graph order
    max_logit_diff: float
    max_abs_logit: float
    same_predictions: int

    @property
    def spikes_equal(self) -> bool:
        return all(layer.mismatches == 0 for layer in self.layers)

    @property
    def spike_agreement(self) -> float:
        values = sum(layer.values for layer in self.layers)
        return 1.0 - sum(layer.mismatches for layer in self.layers) / max(values, 1)

    @property
    def first_mismatch(self) -> tuple[int, str] | None:
        """(step, layer) of the earliest differing spike: the first step, then graph order."""
        found = [(layer.first_step, i) for i, layer in enumerate(self.layers) if layer.first_step
                 is not None]  # fmt: skip
        if not found:
            return None
        step, i = min(found)
        return step, self.layers[i].layer

    def summary(self) -> str:
        spikes = sum(layer.values for layer in self.layers)
        wrong = sum(layer.mismatches for layer in self.layers)
        where = self.first_mismatch
        first = "" if where is None else f", first at step {where[0]} in {where[1]}"
        return (
            f"{self.simulator}: {self.images} images x {self.timesteps} steps, "
            f"{len(self.layers)} LIF layers: {spikes - wrong}/{spikes} spike values equal "
            f"({wrong} differ{first}); same prediction for {self.same_predictions}/"
            f"{self.images}; max |logit difference| {self.max_logit_diff:.3g} "
            f"(max |logit| {self.max_abs_logit:.3g})"
        )


def compare_traces(simulator: str, reference: Trace, other: Trace) -> RoundTrip:
    """Spike by spike and logit by logit agreement of ``other`` with ``reference``."""
    layers = []
    for name, ref in reference.spikes.items():
        if name not in other.spikes:
            raise ConfigError(f"{simulator}: no spikes recorded for layer {name}")
        got = other.spikes[name].reshape(ref.shape).to(ref.dtype)
        differ = (got != ref).reshape(ref.shape[0], -1).any(dim=1)  # [T]
        steps = differ.nonzero().flatten()
        layers.append(
            LayerAgreement(
                name,
                ref.numel(),
                int((got != ref).sum()),
                int(steps[0]) if len(steps) else None,
            )
        )
    diff = (other.logits.to(reference.logits.dtype) - reference.logits).abs()
    same = int((other.logits.argmax(1) == reference.logits.argmax(1)).sum())
    return RoundTrip(
        simulator,
        int(reference.logits.shape[0]),
        int(reference.inputs.shape[0]),
        tuple(layers),
        float(diff.max()) if diff.numel() else 0.0,
        float(reference.logits.abs().max()) if diff.numel() else 0.0,
        same,
    )


def _merge(results: list[RoundTrip]) -> RoundTrip:
    """Batches of one comparison as one: counts add, first steps and maxima take the least /
    the largest."""
    first = results[0]
    layers = []
    for i, layer in enumerate(first.layers):
        parts = [r.layers[i] for r in results]
        steps = [p.first_step for p in parts if p.first_step is not None]
        layers.append(
            LayerAgreement(
                layer.layer,
                sum(p.values for p in parts),
                sum(p.mismatches for p in parts),
                min(steps) if steps else None,
            )
        )
    return RoundTrip(
        first.simulator,
        sum(r.images for r in results),
        first.timesteps,
        tuple(layers),
        max(r.max_logit_diff for r in results),
        max(r.max_abs_logit for r in results),
        sum(r.same_predictions for r in results),
    )


def round_trip(
    model: AreaStack,
    graph,
    images: Tensor,
    simulator: str,
    *,
    batch_size: int = 64,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> RoundTrip:
    """Run ``model`` and ``simulator``'s import of ``graph`` on ``images`` ``[N, C, H, W]``
    (in batches) and compare spikes at every LIF layer and logits. ``model`` is put in eval
    mode and converted to ``dtype``; batch k of rate-coded inputs is drawn with ``seed + k``."""
    model = model.eval().to(dtype)
    net = load_peer(graph, simulator, dtype=dtype)
    results = []
    for k, batch in enumerate(images.to(dtype).split(batch_size)):
        reference = tdsnn_trace(model, batch, seed=seed + k)
        results.append(
            compare_traces(simulator, reference, peer_trace(net, graph, reference.inputs))
        )
    return _merge(results)


def verify_export(
    run_dir: str | Path,
    path: str | Path,
    *,
    which: str = "best",
    images: int = 256,
    batch_size: int = 64,
) -> list[str]:
    """``tdsnn export --verify N``: the NIR file ``path`` read back by every installed peer
    (:data:`PEERS`), run on the first ``images`` test images of ``run_dir`` and compared with
    checkpoint ``which``; one :meth:`RoundTrip.summary` line per peer."""
    import importlib.util

    from tdsnn.data import build_datasets
    from tdsnn.rundir import load_run

    trained = load_run(run_dir, which)
    data = trained.config.data
    size = min(images, data.test_size) if data.test_size is not None else images
    _, test, _ = build_datasets(
        data.dataset,
        data_root=data.data_root,
        image_size=data.image_size,
        seed=trained.config.run.seed,
        test_size=size,
    )
    batch = torch.stack([torch.as_tensor(test[i][0]) for i in range(min(size, len(test)))])
    graph = read_nir(path).graph
    lines = []
    for simulator in PEERS:
        if (
            importlib.util.find_spec(simulator) is None
            or importlib.util.find_spec("nirtorch") is None
        ):
            lines.append(f"{simulator}: not installed (pip install 'tdsnn[test]')")
            continue
        try:
            result = round_trip(trained.model, graph, batch, simulator, batch_size=batch_size)
        except (AssertionError, ValueError, NotImplementedError) as exc:  # the importer refuses
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            lines.append(f"{simulator}: its NIR import refuses this file: {first}")
            continue
        lines.append(result.summary())
    return lines


# --------------------------------------------------------------------------- import


def _uniform(node_name: str, field_name: str, value) -> float:
    values = np.unique(np.asarray(value, dtype=np.float64))
    if values.size != 1:
        raise ConfigError(
            f"NIR import: node {node_name}: {field_name} differs between neurons; tdsnn's LIF "
            "takes one value per layer"
        )
    return float(values[0])


def _lif_from_nir(name: str, node, dt: float) -> LIF:
    """A NIR ``LIF`` as tdsnn's :class:`LIF` (the inverse of the export's mapping)."""
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
    return LIF(
        tau=tau_steps,
        v_threshold=_uniform(name, "v_threshold", node.v_threshold),
        v_reset=v_reset,
        decay_input=decay_input,
    )


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

        nir = _require_nir()
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
        self._keys = {name: _sanitize(name) for name in graph.nodes}
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
    """The :class:`Sheet` in a LIF node's metadata (the keys of the module docstring)."""
    try:
        return Sheet(
            area=area,
            shape=tuple(int(s) for s in np.asarray(metadata[_P + "unit_shape"])),
            side_mm=float(_plain(metadata[_P + "sheet_mm"])),
            neighbourhood_mm=float(_plain(metadata[_P + "neighbourhood_mm"])),
            layout=str(_plain(metadata[_P + "layout"])),
            positions=torch.from_numpy(np.asarray(metadata[_P + "positions_mm"], np.float32)),
            optimized=bool(_plain(metadata[_P + "positions_optimized"])),
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
        dt = float((graph.metadata or {}).get(_P + "dt_s", DT_S))
    return NIRModule(graph, dt)
