"""The tdsnn NIR file: what the graph holds, how tdsnn's LIF maps onto NIR's, the metadata keys.

NIR, the Neuromorphic Intermediate Representation (package ``nir``), is how snntorch,
spikingjelly, norse and neuromorphic hardware tool chains exchange networks.
:mod:`tdsnn.nir.writer` writes this format, :mod:`tdsnn.nir.reader` reads it; this module
holds the constants and graph queries both use.

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

import keyword

import numpy as np

from tdsnn.errors import import_optional

__all__ = [
    "DT_S",
    "NIR_FORMAT",
    "NIR_FORMAT_VERSION",
    "PREFIX",
    "area_nodes",
    "lif_nodes",
    "plain",
    "require_nir",
    "submodule_name",
]

DT_S = 1e-4  # seconds per step the exported LIF time constants assume (snntorch's fixed dt)
NIR_FORMAT = "tdsnn-nir"
NIR_FORMAT_VERSION = 1
PREFIX = "tdsnn."  # prefix of every metadata key tdsnn writes


def require_nir():
    """The ``nir`` package, or a one-line ``MissingPackageError`` naming the ``nir`` extra."""
    return import_optional("nir", "nir", "NIR export")


def plain(value):
    """A metadata value as written: bytes -> str, numpy scalars -> Python scalars."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    return value


def lif_nodes(graph) -> list[str]:
    """Names of the graph's ``LIF`` nodes, in the order they were added (input to output)."""
    nir = require_nir()
    return [name for name, node in graph.nodes.items() if isinstance(node, nir.LIF)]


def area_nodes(graph) -> dict[str, str]:
    """Area name -> name of the LIF node of that area's output units, in stack order."""
    found = {}
    for name, node in graph.nodes.items():
        area = plain(node.metadata.get(PREFIX + "area")) if node.metadata else None
        if area is not None:
            found[str(area)] = name
    return found


def submodule_name(name: str) -> str:
    """The submodule name nirtorch gives NIR node ``name`` (dots become underscores), which
    :class:`~tdsnn.nir.reader.NIRModule` gives it too."""
    name = name.replace(".", "_")
    return "nir_node_" + name if keyword.iskeyword(name) else name
