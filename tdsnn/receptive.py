"""Receptive fields of an area stack's units, in input pixels, from its architecture.

A chain of convolutions with kernel sizes ``k_l`` and strides ``s_l`` has the receptive field
``r_L = 1 + Σ_l (k_l − 1)·j_{l−1}``, with the jump ``j_l = s_1·…·s_l`` (``j_0 = 1``): the side
of the input square that can reach one output unit. In an :class:`~tdsnn.areas.AreaStack` the
widest path runs through the stem's 3×3 convolution and both 3×3 convolutions of every residual
block (the 1×1 shortcut is narrower); an area's first block carries the area's stride. The
``readout`` layer of ``model.readout: fc`` pools the whole image (an infinite receptive field).
A published network (``model.arch``) has no stem: each layer's 2 x 2 max-pool counts as a
kernel-2, stride-2 step of the chain, and its ``fc1`` pools the whole image.
This is the theoretical receptive field; padding lets it overhang the image at the border.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tdsnn.areas import AreaStack, LayerStack
from tdsnn.data.probes import resolvable_frequencies
from tdsnn.errors import ConfigError
from tdsnn.model_config import (
    PAPER_LAYERS,
    READOUT,
    ModelConfig,
    load_area_table,
    parse_area_stack,
)

__all__ = [
    "border_units",
    "conv_chain_rf",
    "grating_frequencies",
    "receptive_field_px",
    "receptive_fields_px",
]


def conv_chain_rf(layers: list[tuple[int, int]]) -> int:
    """Receptive field (px) of convolutions ``[(kernel, stride), ...]`` in input order."""
    rf, jump = 1, 1
    for kernel, stride in layers:
        rf += (kernel - 1) * jump
        jump *= stride
    return rf


def _architecture(model: Any) -> tuple[tuple[str, ...], dict[str, list[tuple[int, int]]]]:
    """Areas of ``model`` in order and each area's ``(kernel, stride)`` convolutions on the
    widest path; the stem's under the key ``""``."""
    if isinstance(model, LayerStack) and model.config.arch != "stack":
        return _paper_architecture(model.config.arch)
    if isinstance(model, AreaStack):
        stem = model.stem.conv
        convs = {"": [(stem.kernel_size[0], stem.stride[0])]}
        for name, area in model.areas.items():
            if name == READOUT:
                continue
            convs[name] = [
                (conv.conv.kernel_size[0], conv.conv.stride[0])
                for block in area.blocks
                for conv in (block.conv1, block.conv2)
            ]
        return tuple(model.area_names), convs
    if isinstance(model, dict):
        section = model.get("model", model)
    else:
        section = getattr(model, "model", model)  # a RunConfig's model section
    if isinstance(section, dict):
        if "area_stack" not in section:
            raise ConfigError("the config names no model.area_stack: the architecture is unknown")
        stack, blocks = section["area_stack"], section.get("blocks", 1)
        readout, arch = section.get("readout", "linear"), section.get("arch", "stack")
    elif isinstance(section, ModelConfig):
        stack, blocks, readout = section.area_stack, section.blocks, section.readout
        arch = section.arch
    else:
        raise TypeError(f"expected an AreaStack, ModelConfig, RunConfig or dict, got {model!r}")
    if arch != "stack":
        return _paper_architecture(arch)
    table = load_area_table()
    names = parse_area_stack(stack, table.names)
    convs = {"": [(3, 1)]}
    for name in names:
        spec = table.areas[name]
        count = spec.blocks if blocks is None else int(blocks)
        convs[name] = [(3, spec.stride), (3, 1)] + [(3, 1)] * (2 * (count - 1))
    return (*names, READOUT) if readout == "fc" else names, convs


def _paper_architecture(arch: str) -> tuple[tuple[str, ...], dict[str, list[tuple[int, int]]]]:
    """:func:`_architecture` of a published network: no stem, each layer's 2 x 2 max-pool
    (kernel 2, stride 2) where it pools its input, then its 3 x 3 convolution; ``fc1`` pools
    the whole image."""
    layers = PAPER_LAYERS[arch]
    convs: dict[str, list[tuple[int, int]]] = {"": []}
    for layer in layers:
        if layer.name != "fc1":
            convs[layer.name] = [(2, 2)] * layer.pool_input + [(3, 1)]
    return tuple(layer.name for layer in layers), convs


def _chains(model: Any) -> dict[str, list[tuple[int, int]]]:
    """Every area's ``(kernel, stride)`` chain from the input, in stack order (the layers that
    pool the whole image, ``readout`` and ``fc1``, left out)."""
    names, convs = _architecture(model)
    chain = list(convs[""])
    out = {}
    for name in names:
        if name in convs:
            chain = chain + convs[name]
            out[name] = chain
    return out


def receptive_fields_px(model: Any) -> dict[str, float]:
    """Receptive field side (input px) of every area's output units, in stack order.

    ``model``: an :class:`~tdsnn.areas.AreaStack`, a :class:`~tdsnn.model_config.ModelConfig`, a
    :class:`~tdsnn.config.RunConfig`, or a config dict (a run's, or its ``model`` section).
    ``readout`` (global pooling) is ``inf``.
    """
    names, _ = _architecture(model)
    chains = _chains(model)
    return {name: float(conv_chain_rf(chains[name])) if name in chains else math.inf
            for name in names}  # fmt: skip


def receptive_field_px(model: Any, area: str) -> float:
    """Receptive field side (input px) of ``area``'s units (see :func:`receptive_fields_px`).

    Raises:
        ConfigError: ``area`` is not in the stack.
    """
    fields = receptive_fields_px(model)
    for name, value in fields.items():
        if name.lower() == str(area).lower():
            return value
    raise ConfigError(f"area {area!r} is not in this stack ({', '.join(fields)})")


def border_units(model: Any, area: str, shape: tuple[int, int, int], image_px: int) -> np.ndarray:
    """Which of ``area``'s units see the zero padding: ``bool [C·H·W]`` (node order, channel
    first), True where the unit's receptive field overlaps the border of an ``image_px`` image.

    With every convolution padded to keep its size (``k // 2``), the unit at row ``h`` of an
    area whose strides multiply to ``J`` is centred on input row ``h·J``; its field spans
    ``± (r − 1) / 2`` pixels about it (:func:`receptive_fields_px`). Every unit of the
    ``readout`` overlaps it.

    Raises:
        ConfigError: ``area`` is not in the stack.
    """
    c, h, w = shape
    chain = next((v for k, v in _chains(model).items() if k.lower() == str(area).lower()), None)
    if chain is None:
        receptive_field_px(model, area)  # the readout (inf) or a one-line error
        return np.ones(c * h * w, dtype=bool)
    jump = math.prod(stride for _, stride in chain)
    half = (conv_chain_rf(chain) - 1) / 2

    def outside(n: int) -> np.ndarray:
        centre = np.arange(n) * jump
        return (centre - half < 0) | (centre + half > image_px - 1)

    grid = outside(h)[:, None] | outside(w)[None, :]
    return np.broadcast_to(grid, (c, h, w)).ravel().copy()


def grating_frequencies(model: Any, image_size: int) -> tuple[float, ...]:
    """The grating frequencies (cycles per image) of ``tdsnn record --stimuli gratings``: from
    one cycle per the widest receptive field of ``model``'s areas (at most the image) to one
    cycle per :data:`~tdsnn.data.probes.MIN_PERIOD_PX` pixels
    (:func:`~tdsnn.data.probes.resolvable_frequencies`)."""
    return resolvable_frequencies(image_size, receptive_fields_px(model).values())
