"""Spiking area stacks of the ventral stream: stem -> V1 -> V2 -> V4 -> IT -> readout.

Every layer runs on time-major tensors ``[T, B, C, H, W]``. Convolutions and batch norm are
stateless, so they run once over the merged ``[T*B, C, H, W]`` batch; the LIF neurons
(:func:`tdsnn.neurons.lif_multistep`) integrate over T; in every block, batch norm, the
residual shortcut and the LIF run as one fused op (:func:`tdsnn.ops.bn_lif.bn_lif`, the
composition where it does not apply). An area is a sequence of spiking
residual blocks; its output spikes (and, when asked, its membrane potential) are what the
topographic losses, recorders and analyses read.

``model.neuron: relu`` builds the same stack with ReLU units, the non-spiking control: one
step (T = 1), the image as input, real-valued activations where the LIF stack has spikes and
the pre-activation where it has the membrane potential. ``model.readout: fc`` adds the
topographic layer ``readout`` after the last area (:class:`FCReadout`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from tdsnn.data.encoding import encode, normalize_images
from tdsnn.errors import ConfigError
from tdsnn.model_config import (
    READOUT,
    AreaSpec,
    ModelConfig,
    load_area_table,
    parse_area_stack,
    scaled_channels,
    spell_areas,
)
from tdsnn.neurons import LIF
from tdsnn.ops.bn_lif import bn_lif

if TYPE_CHECKING:
    from tdsnn.config import RunConfig


def _conv_out(size: int, stride: int) -> int:
    """Spatial size after a 3x3 convolution with padding 1."""
    return (size - 1) // stride + 1


class ReLUUnits(nn.Module):
    """ReLU units with the call of :class:`~tdsnn.neurons.LIF`: ``x [T, *] -> relu(x)``, and
    with ``return_membrane`` also the pre-activation ``x`` (the LIF's membrane counterpart)."""

    def forward(self, x: Tensor, return_membrane: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        y = torch.relu(x)
        return (y, x) if return_membrane else y


def make_units(config: ModelConfig) -> nn.Module:
    """The units of every layer: LIF neurons or, for ``neuron: relu``, ReLU units."""
    if config.neuron == "relu":
        return ReLUUnits()
    return LIF(config.lif_params())


class SeqConvBN(nn.Module):
    """Conv2d + BatchNorm2d on every time step: ``[T, B, C, H, W] -> [T, B, C', H', W']``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1):
        super().__init__()
        padding = kernel_size // 2
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        t, b = x.shape[:2]
        y = self.bn(self.conv(x.flatten(0, 1)))  # [T*B, C', H', W']
        return y.unflatten(0, (t, b))

    def spiking(
        self,
        x: Tensor,
        units: nn.Module,
        shortcut: Tensor | None = None,
        return_membrane: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """``units(self(x) + shortcut)``: ``x [T, B, C, H, W]`` -> spikes ``[T, B, C', H', W']``
        (and H with ``return_membrane``).

        Batch norm, shortcut and LIF run as one fused op (:func:`tdsnn.ops.bn_lif.bn_lif`,
        which falls back to the composition where it does not apply). Where a hook watches
        this module, its batch norm or the units, the modules run one by one, so that the hooks
        see the calls they expect.
        """
        if _hooked(self, self.bn, units):
            z = self(x) if shortcut is None else self(x) + shortcut
            return units(z, return_membrane=return_membrane)
        t, b = x.shape[:2]
        y = self.conv(x.flatten(0, 1)).unflatten(0, (t, b))  # [T, B, C', H', W']
        return bn_lif(y, self.bn, units, shortcut, return_membrane)


def _hooked(*modules: nn.Module) -> bool:
    """Whether a forward (pre-)hook watches any of ``modules`` (or every module)."""
    from torch.nn.modules import module as torch_module

    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in modules)


class SpikingBlock(nn.Module):
    """Spiking residual block: LIF(BN(conv(LIF(BN(conv(x))))) + shortcut(x))."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, config: ModelConfig):
        super().__init__()
        self.conv1 = SeqConvBN(in_channels, out_channels, 3, stride)
        self.lif1 = make_units(config)
        self.conv2 = SeqConvBN(out_channels, out_channels, 3, 1)
        self.lif2 = make_units(config)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = SeqConvBN(in_channels, out_channels, 1, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor, return_membrane: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """``x``: spikes ``[T, B, C, H, W]``; returns spikes (and membrane H) of the block."""
        s = self.conv1.spiking(x, self.lif1)
        return self.conv2.spiking(s, self.lif2, self.shortcut(x), return_membrane)


class Area(nn.Module):
    """One visual area: ``blocks`` spiking residual blocks, the first with ``stride``."""

    def __init__(
        self, spec: AreaSpec, in_channels: int, channels: int, blocks: int, config: ModelConfig
    ):
        super().__init__()
        self.spec = spec
        self.channels = channels
        layers = [SpikingBlock(in_channels, channels, spec.stride, config)]
        layers += [SpikingBlock(channels, channels, 1, config) for _ in range(blocks - 1)]
        self.blocks = nn.ModuleList(layers)

    @property
    def output_weight(self) -> Tensor:
        """Weight ``[C, C, 3, 3]`` of the convolution feeding the area's output neurons."""
        return self.blocks[-1].conv2.conv.weight

    @property
    def output_units(self) -> nn.Module:
        """The area's output neurons (their input is the area's input current)."""
        return self.blocks[-1].lif2

    def forward(self, x: Tensor, return_membrane: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        for block in self.blocks[:-1]:
            x = block(x)
        return self.blocks[-1](x, return_membrane=return_membrane)


class FCReadout(nn.Module):
    """The fully connected topographic layer of ``model.readout: fc`` (Truong & Hasson's fc1).

    Global average pooling of the last area over space, a linear layer to ``units`` units
    (LIF or ReLU, as ``model.neuron`` says) that sit on a near-square grid; the output is
    shaped like an area's, ``[T, B, units, 1, 1]``. Its sheet is the last area's size.
    """

    def __init__(self, spec: AreaSpec, in_channels: int, units: int, config: ModelConfig):
        super().__init__()
        self.spec = spec
        self.channels = units
        self.fc = nn.Linear(in_channels, units)
        self.units = make_units(config)

    @property
    def output_weight(self) -> Tensor:
        """Incoming weight rows ``[units, in_channels]`` of the layer's units."""
        return self.fc.weight

    @property
    def output_units(self) -> nn.Module:
        """The layer's neurons (their input is the layer's input current)."""
        return self.units

    def forward(self, x: Tensor, return_membrane: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """``x`` ``[T, B, C, H, W]`` -> ``[T, B, units, 1, 1]`` (and the pre-activation)."""
        current = self.fc(x.mean(dim=(3, 4)))[..., None, None]  # [T, B, units, 1, 1]
        return self.units(current, return_membrane=return_membrane)


@dataclass
class StackOutput:
    """What :class:`AreaStack` returns.

    ``logits``: ``[B, classes]``. ``spikes`` / ``membrane``: area name -> ``[T, B, C, H, W]``
    (float {0,1} spikes; membrane H before reset), only for the areas that were asked for.
    """

    logits: Tensor
    spikes: dict[str, Tensor] = field(default_factory=dict)
    membrane: dict[str, Tensor] = field(default_factory=dict)


class AreaStack(nn.Module):
    """Stem ("retina/LGN": conv-BN-units), the chosen areas, and a readout.

    The classifier (``readout``) averages the last layer's output over time and space. With
    ``model.readout: fc`` the last layer is :class:`FCReadout` (named ``readout`` in
    :attr:`area_names`, sheets and recordings) and dropout comes before the classifier.
    """

    def __init__(
        self,
        config: ModelConfig,
        num_classes: int,
        in_channels: int = 3,
        *,
        normalize: tuple[float, float] | None = None,
    ):
        super().__init__()
        table = load_area_table()
        self.config = config
        self.normalize = normalize  # (mean, std) of the input images, or None (data.normalize)
        areas = parse_area_stack(config.area_stack, table.names)
        stem_channels = scaled_channels(table.stem_channels, config.width)
        self.stem = SeqConvBN(in_channels, stem_channels, 3, 1)
        self.stem_lif = make_units(config)
        self.areas = nn.ModuleDict()
        channels = stem_channels
        for name in areas:
            spec = table.areas[name]
            out = scaled_channels(spec.channels, config.width)
            blocks = config.blocks if config.blocks is not None else spec.blocks
            self.areas[name] = Area(spec, channels, out, blocks, config)
            channels = out
        self.dropout = nn.Identity()
        if config.readout == "fc":
            last = table.areas[areas[-1]]
            spec = AreaSpec(READOUT, config.readout_units, 1, 1, last.sheet_mm,
                            last.neighbourhood_mm)  # fmt: skip
            self.areas[READOUT] = FCReadout(spec, channels, config.readout_units, config)
            self.dropout = nn.Dropout(config.readout_dropout)
            channels = config.readout_units
        self.area_names: tuple[str, ...] = tuple(self.areas)  # = layer_names(config)
        self.readout = nn.Linear(channels, num_classes)

    @classmethod
    def for_run(cls, config: RunConfig, num_classes: int, in_channels: int = 3) -> AreaStack:
        """The stack of a run's ``config``: its ``model`` section, and its images normalised as
        ``data.normalize`` says."""
        return cls(config.model, num_classes, in_channels, normalize=config.data.normalize)

    @property
    def timesteps(self) -> int:
        return self.config.timesteps

    def encode(self, images: Tensor) -> Tensor:
        """``[B, C, H, W]`` images in [0, 1] -> ``[T, B, C, H, W]`` input currents (the
        images normalised first when :attr:`normalize` is set)."""
        images = normalize_images(images, self.normalize)
        return encode(images, self.timesteps, self.config.encoding)

    def output_shapes(self, image_size: int | tuple[int, int]) -> dict[str, tuple[int, int, int]]:
        """Each area's output shape ``(C, H, W)`` for square (or ``(H, W)``) input images."""
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        shapes = {}
        for name, area in self.areas.items():
            if isinstance(area, FCReadout):
                h = w = 1
            else:
                h, w = _conv_out(h, area.spec.stride), _conv_out(w, area.spec.stride)
            shapes[name] = (area.channels, h, w)
        return shapes

    def forward(
        self,
        images: Tensor,
        record: bool | Iterable[str] = False,
        record_membrane: bool | Iterable[str] = False,
    ) -> StackOutput:
        """Run the stack on ``images [B, C, H, W]``.

        ``record`` / ``record_membrane``: True for every area, or an iterable of area names,
        whose spikes / membrane potentials are returned (the tensors the network computed
        anyway: no copies).
        """
        want_spikes = self._area_set(record)
        want_membrane = self._area_set(record_membrane)
        out = StackOutput(logits=images.new_empty(0))
        if self.config.encoding == "direct":
            # The same image at every step: convolve (and batch-normalise) it once, then repeat.
            images = normalize_images(images, self.normalize)
            current = self.stem(images.unsqueeze(0)).expand(self.timesteps, -1, -1, -1, -1)
        else:
            current = self.stem(self.encode(images))
        x = self.stem_lif(current)
        for name, area in self.areas.items():
            if name in want_membrane:
                x, v = area(x, return_membrane=True)
                out.membrane[name] = v
            else:
                x = area(x)
            if name in want_spikes:
                out.spikes[name] = x
        rates = x.mean(dim=(0, 3, 4))  # over T, H, W -> [B, C]
        out.logits = self.readout(self.dropout(rates))
        return out

    def _area_set(self, which: bool | Iterable[str]) -> set[str]:
        if which is True:
            return set(self.area_names)
        if not which:
            return set()
        found, unknown = spell_areas(which, self.area_names)
        if unknown:
            raise ConfigError(
                f"areas {sorted(unknown)} are not in this stack {'-'.join(self.area_names)}"
            )
        return set(found)


@torch.no_grad()
def area_spike_counts(model: AreaStack, batches: Iterable[Tensor]) -> dict[str, Tensor]:
    """Spike counts summed over time, ``[N, C, H, W]`` per area (on the CPU), for image batches
    ``[B, C, H, W]`` (N images in all)."""
    counts: dict[str, list[Tensor]] = {name: [] for name in model.area_names}
    for images in batches:
        for name, spikes in model(images, record=True).spikes.items():
            counts[name].append(spikes.float().sum(0).cpu())
    return {name: torch.cat(chunks) for name, chunks in counts.items()}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
