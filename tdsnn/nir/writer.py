"""tdsnn -> NIR: trained networks as NIR graphs with their cortical positions.

:func:`nir_graph` turns an :class:`~tdsnn.areas.AreaStack` and its sheets into a
``nir.NIRGraph`` laid out as :mod:`tdsnn.nir.format` describes (one step of the network, batch
norm folded into the convolutions, LIF parameters mapped onto NIR's continuous LIF, each area's
sheet in the metadata of its output units); :func:`write_nir` writes it atomically;
:func:`export_run` is ``tdsnn export RUN_DIR --format nir``.

Needs the ``nir`` extra (``pip install 'tdsnn[nir]'``).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import tdsnn
from tdsnn.areas import AreaStack, FCReadout, ReLUUnits, SeqConvBN, SpikingBlock
from tdsnn.errors import ConfigError
from tdsnn.neurons import LIF
from tdsnn.nir.format import DT_S, NIR_FORMAT, NIR_FORMAT_VERSION, PREFIX, require_nir
from tdsnn.sheet import Sheet

__all__ = ["ExportResult", "export_run", "nir_graph", "write_nir"]


def _unsupported(layer: str, what: str) -> ConfigError:
    return ConfigError(f"NIR export: layer {layer} ({what}) cannot be expressed in NIR")


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
                PREFIX + "module": name,
                PREFIX + "batch_norm_folded": True,
                PREFIX + "batch_norm_eps": float(bn.eps),
            },
        )
        shape = tuple(int(s) for s in node.output_type["output"])
        return self.add(name, node, [source], shape)

    def lif(self, name: str, module: nn.Module, sources: list[str]) -> str:
        """tdsnn ``LIF`` -> NIR ``LIF`` with the mapping of :mod:`tdsnn.nir.format`."""
        if isinstance(module, ReLUUnits):
            raise _unsupported(name, "ReLU units: NIR has no ReLU node")
        if type(module) is not LIF:
            raise _unsupported(name, type(module).__name__)
        p = module.params
        if p.v_reset is None:
            raise _unsupported(
                name, "soft reset V -= V_th: NIR's LIF resets to v_reset; train with v_reset 0.0"
            )
        shapes = {self.shapes[s] for s in sources}
        if len(shapes) != 1:
            raise _unsupported(name, f"inputs of different shapes {sorted(shapes)}")
        shape = shapes.pop()
        tau_steps = float(p.tau)
        full = np.ones(shape, dtype=np.float64)  # neuron parameters in float64: dt·τ_s is exact
        node = self.nir.LIF(
            tau=full * (tau_steps * self.dt),
            r=full * (1.0 if p.decay_input else tau_steps),
            v_leak=full * float(p.v_reset),
            v_threshold=full * float(p.v_threshold),
            v_reset=full * float(p.v_reset),
            metadata={
                PREFIX + "module": name,
                PREFIX + "dt_s": self.dt,
                PREFIX + "tau_steps": tau_steps,
                PREFIX + "decay_input": bool(p.decay_input),
                PREFIX + "v_threshold": float(p.v_threshold),
                PREFIX + "v_reset": float(p.v_reset),
                PREFIX + "reset": "hard",
                PREFIX + "fire": "H >= v_threshold",
                PREFIX + "update": (
                    "H[t] = V[t-1] + (X[t] - (V[t-1] - v_reset)) / tau_steps"
                    if p.decay_input
                    else "H[t] = V[t-1] - (V[t-1] - v_reset) / tau_steps + X[t]"
                )
                + "; S[t] = H[t] >= v_threshold; V[t] = v_reset if S[t] else H[t]; V[0] = "
                "v_reset. Forward Euler of the NIR LIF with dt = tdsnn.dt_s seconds",
                PREFIX + "surrogate": p.surrogate.name,
                PREFIX + "surrogate_alpha": float(p.surrogate.alpha),
                PREFIX + "detach_reset": bool(p.detach_reset),
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
            metadata={PREFIX + "module": f"{prefix}flatten"},
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
            metadata={PREFIX + "module": name},
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
        dt: seconds per step; LIF ``tau`` = tau_steps·dt (see :mod:`tdsnn.nir.format`).
        dtype: dtype of weights and biases (float32, or float64 for an exact check).

    Returns:
        a ``nir.NIRGraph``: input ``[C, H, W]`` per step, output ``[classes]`` per step.
    """
    nir = require_nir()
    if not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
        raise ConfigError(f"nir_graph: dt must be a positive number of seconds, got {dt!r}")
    if not isinstance(model, AreaStack):
        arch = getattr(getattr(model, "config", None), "arch", None)
        what = f"model.arch {arch!r}" if arch else type(model).__name__
        raise ConfigError(f"NIR export covers the area stacks (--arch stack), not {what}")
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
        PREFIX + "format": NIR_FORMAT,
        PREFIX + "format_version": NIR_FORMAT_VERSION,
        PREFIX + "version": tdsnn.__version__,
        PREFIX + "area_stack": "-".join(model.area_names),
        PREFIX + "areas": ",".join(model.area_names),
        PREFIX + "timesteps": int(config.timesteps),
        PREFIX + "encoding": str(config.encoding),
        PREFIX + "dt_s": float(dt),
        PREFIX + "num_classes": int(model.readout.out_features),
        PREFIX + "logits": "tdsnn's logits are the mean over the T steps of the output node",
        PREFIX + "input": (
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
            PREFIX + "area": area,
            PREFIX + "unit_shape": np.asarray(sheet.shape, dtype=np.int64),
            PREFIX + "positions_mm": sheet.positions.numpy().astype(np.float32),
            PREFIX + "sheet_mm": float(sheet.side_mm),
            PREFIX + "neighbourhood_mm": float(sheet.neighbourhood_mm),
            PREFIX + "layout": str(sheet.layout),
            PREFIX + "positions_optimized": bool(sheet.optimized),
        }
    )


def write_nir(graph, path: str | Path) -> Path:
    """Write ``graph`` to ``path`` (HDF5, ``nir.write``) through a temporary file beside it, so
    ``path`` only ever holds a complete file; an OS failure is a one-line ``ConfigError``."""
    nir = require_nir()
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

    require_nir()
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
