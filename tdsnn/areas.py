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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tdsnn.data.encoding import encode, normalize_images
from tdsnn.errors import ConfigError
from tdsnn.model_config import (
    PAPER_INPUT_CHANNELS,
    PAPER_LAYERS,
    READOUT,
    AreaSpec,
    AreaTable,
    ModelConfig,
    PaperLayer,
    load_area_table,
    parse_area_stack,
    scaled_channels,
    spell_areas,
)
from tdsnn.neurons import LIF
from tdsnn.ops.bn_lif import bn_lif


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

    def output_hw(self, h: int, w: int) -> tuple[int, int]:
        """The area's output size for an input of ``h x w``."""
        return _conv_out(h, self.spec.stride), _conv_out(w, self.spec.stride)

    def forward(self, x: Tensor, return_membrane: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        for block in self.blocks[:-1]:
            x = block(x)
        return self.blocks[-1](x, return_membrane=return_membrane)


class OneLayer(nn.Module):
    """An area of one layer: ``spec``, ``channels``, an optional 2 x 2 max-pool of its input
    (``pool_input``) and its ``units`` (LIF or ReLU, as ``model.neuron`` says)."""

    def __init__(self, spec: AreaSpec, channels: int, pool_input: bool, config: ModelConfig):
        super().__init__()
        self.spec = spec
        self.channels = channels
        self.pool_input = pool_input
        self.units = make_units(config)

    @property
    def output_units(self) -> nn.Module:
        """The layer's neurons (their input is the layer's input current)."""
        return self.units

    def pooled(self, x: Tensor) -> Tensor:
        """``x [..., C, H, W]`` after the 2 x 2 max-pool (stride 2) of ``pool_input``, on every
        leading index (time step, image); ``x`` itself without it."""
        if not self.pool_input:
            return x
        return F.max_pool2d(x.reshape(-1, *x.shape[-3:]), 2).unflatten(0, x.shape[:-3])


class FCReadout(OneLayer):
    """The fully connected topographic layer of ``model.readout: fc`` (Truong & Hasson's fc1).

    Global average pooling of the last area over space (after a 2 x 2 max-pool with
    ``pool_input``), a linear layer to ``units`` units (LIF or ReLU, as ``model.neuron`` says)
    that sit on a near-square grid; the output is shaped like an area's, ``[T, B, units, 1, 1]``.
    Its sheet is the last area's size.
    """

    def __init__(
        self,
        spec: AreaSpec,
        in_channels: int,
        units: int,
        config: ModelConfig,
        pool_input: bool = False,
    ):
        super().__init__(spec, units, pool_input, config)
        self.fc = nn.Linear(in_channels, units)

    @property
    def output_weight(self) -> Tensor:
        """Incoming weight rows ``[units, in_channels]`` of the layer's units."""
        return self.fc.weight

    def output_hw(self, h: int, w: int) -> tuple[int, int]:
        return 1, 1

    def forward(self, x: Tensor, return_membrane: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """``x`` ``[T, B, C, H, W]`` -> ``[T, B, units, 1, 1]`` (and the pre-activation)."""
        current = self.fc(self.pooled(x).mean(dim=(3, 4)))[..., None, None]  # [T, B, units, 1, 1]
        return self.units(current, return_membrane=return_membrane)


class ConvLayer(OneLayer):
    """One convolutional layer of a published network as an area (``model.arch`` other than
    ``stack``, ``layer`` its row of :data:`~tdsnn.model_config.PAPER_LAYERS`): a 2 x 2 max-pool
    of the input (``layer.pool_input``), a 3 x 3 convolution with padding 1 and a bias, batch
    norm (``layer.batch_norm``) and units, on ``[T, B, C, H, W]``. Its modules are the published
    layer's ``conv<i>`` and ``bn<i>`` (:func:`published_keys` maps the names)."""

    def __init__(self, spec: AreaSpec, in_channels: int, layer: PaperLayer, config: ModelConfig):
        super().__init__(spec, spec.channels, layer.pool_input, config)
        self.conv = nn.Conv2d(in_channels, spec.channels, 3, 1, 1)
        self.bn = nn.BatchNorm2d(spec.channels) if layer.batch_norm else nn.Identity()

    @property
    def output_weight(self) -> Tensor:
        """Weight ``[C, C_in, 3, 3]`` of the convolution feeding the layer's units."""
        return self.conv.weight

    def output_hw(self, h: int, w: int) -> tuple[int, int]:
        return (h // 2, w // 2) if self.pool_input else (h, w)

    def forward(self, x: Tensor, return_membrane: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """``x [T, B, C, H, W]`` -> units' output ``[T, B, C', H', W']`` (and the
        pre-activation with ``return_membrane``). An input repeated over time (a stride-0 time
        dimension: the first layer under direct encoding) is convolved once."""
        t, b = x.shape[:2]
        if x.stride(0) == 0:
            current = self.bn(self.conv(self.pooled(x[0]))).expand(t, -1, -1, -1, -1)
        else:
            current = self.bn(self.conv(self.pooled(x.flatten(0, 1)))).unflatten(0, (t, b))
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


class LayerStack(nn.Module):
    """What every network of tdsnn shares: ``areas`` (name -> area module, in order, each with
    ``spec``, ``channels``, ``output_weight``, ``output_units`` and ``output_hw``), a dropout
    and a linear classifier ``readout`` on the last area's output averaged over time and space.
    Subclasses build the areas and :meth:`_input`, the first area's input ``[T, B, C, H, W]``;
    ``normalize``: ``(mean, std)`` of the input images (``data.normalize``), or None.
    """

    config: ModelConfig
    normalize: tuple[float, float] | None
    areas: nn.ModuleDict
    dropout: nn.Module
    readout: nn.Linear
    in_channels: int

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
        self.in_channels = in_channels
        self.normalize = normalize
        channels = self._build(table)
        self.readout = nn.Linear(channels, num_classes)

    def _build(self, table: AreaTable) -> int:
        """Build the areas (and any stem, dropout) from the area ``table``; return the width
        of the last area's output, the classifier's input."""
        raise NotImplementedError

    @property
    def area_names(self) -> tuple[str, ...]:
        return tuple(self.areas)

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
            h, w = area.output_hw(h, w)
            shapes[name] = (area.channels, h, w)
        return shapes

    def _input(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(
        self,
        images: Tensor,
        record: bool | Iterable[str] = False,
        record_membrane: bool | Iterable[str] = False,
    ) -> StackOutput:
        """Run the network on ``images [B, C, H, W]``.

        ``record`` / ``record_membrane``: True for every area, or an iterable of area names,
        whose spikes / membrane potentials are returned (the tensors the network computed
        anyway: no copies).
        """
        return self.forward_from(self._input(images), None, record, record_membrane)

    def area_input(self, images: Tensor, area: str) -> Tensor:
        """What ``area`` receives for ``images [B, C, H, W]``: the output ``[T, B, C, H, W]``
        of the layers before it (the stem's spikes for the first area of a stack)."""
        if area not in self.areas:
            raise ConfigError(f"area {area!r} is not in this network ({', '.join(self.areas)})")
        x = self._input(images)
        for name, module in self.areas.items():
            if name == area:
                break
            x = module(x)
        return x

    def forward_from(
        self,
        x: Tensor,
        start: str | None = None,
        record: bool | Iterable[str] = False,
        record_membrane: bool | Iterable[str] = False,
    ) -> StackOutput:
        """The rest of :meth:`forward` from area ``start`` (None: the first), given its input
        ``x [T, B, C, H, W]`` (:meth:`area_input`); areas before ``start`` are not recorded."""
        want_spikes = self._area_set(record)
        want_membrane = self._area_set(record_membrane)
        out = StackOutput(logits=x.new_empty(0))
        names = self.area_names
        for name in names[names.index(start) if start is not None else 0 :]:
            area = self.areas[name]
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


class AreaStack(LayerStack):
    """Stem ("retina/LGN": conv-BN-units), the chosen areas, and a readout.

    The classifier (``readout``) averages the last layer's output over time and space. With
    ``model.readout: fc`` the last layer is :class:`FCReadout` (named ``readout`` in
    :attr:`area_names`, sheets and recordings) and dropout comes before the classifier.
    """

    def _build(self, table: AreaTable) -> int:
        """The stem, the areas and, with ``model.readout: fc``, the fc layer and its dropout;
        returns the classifier's input width."""
        config, in_channels = self.config, self.in_channels
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
        return channels

    def _input(self, images: Tensor) -> Tensor:
        """The stem's spikes ``[T, B, C, H, W]``."""
        if self.config.encoding == "direct":
            # The same image at every step: convolve (and batch-normalise) it once, then repeat.
            images = normalize_images(images, self.normalize)
            current = self.stem(images.unsqueeze(0)).expand(self.timesteps, -1, -1, -1, -1)
        else:
            current = self.stem(self.encode(images))
        return self.stem_lif(current)


class PaperNet(LayerStack):
    """A published network (``model.arch``: ``wsas-mnist``, ``wsas-cifar``,
    :data:`~tdsnn.model_config.PAPER_LAYERS`) whose layers are areas: :class:`ConvLayer` s, then
    ``fc1`` (:class:`FCReadout`, ``model.readout_units`` units on a grid), dropout and the
    classifier (the published ``fc2``, here ``readout``). Units as ``model.neuron`` says: ReLU
    (one step, the published network) or LIF over ``T`` steps (logits of the averaged fc1
    spikes, i.e. the logits averaged over steps). Each layer's sheet borrows the geometry of an
    area-table row. The input channels are the published network's
    (:data:`~tdsnn.model_config.PAPER_INPUT_CHANNELS`, whatever ``in_channels`` says): grey
    datasets served as three equal channels reach ``wsas-mnist`` as their mean.
    ``load_state_dict`` also takes the published parameter names (:func:`published_keys`).
    """

    def _build(self, table: AreaTable) -> int:
        """The layers as areas, dropout; returns the classifier's input width."""
        config = self.config
        self.in_channels = PAPER_INPUT_CHANNELS[config.arch]
        self.areas = nn.ModuleDict()
        channels = self.in_channels
        for layer in PAPER_LAYERS[config.arch]:
            row = table.areas[layer.table_area]
            if layer.name == "fc1":
                spec = AreaSpec("fc1", config.readout_units, 1, 1, row.sheet_mm,
                                row.neighbourhood_mm)  # fmt: skip
                area = FCReadout(spec, channels, config.readout_units, config, layer.pool_input)
            else:
                spec = AreaSpec(layer.name, layer.channels, 1, 1, row.sheet_mm,
                                row.neighbourhood_mm)  # fmt: skip
                area = ConvLayer(spec, channels, layer, config)
            self.areas[layer.name] = area
            channels = area.channels
        self.dropout = nn.Dropout(config.readout_dropout)
        self.register_load_state_dict_pre_hook(_published_names)
        return channels

    def _input(self, images: Tensor) -> Tensor:
        """The images repeated over ``T`` (direct encoding), or their encoded currents."""
        if images.shape[1] != self.in_channels and self.in_channels == 1:
            images = images.mean(1, keepdim=True)  # a grey image served as equal channels
        if self.config.encoding == "direct":
            images = normalize_images(images, self.normalize)
            return images.unsqueeze(0).expand(self.timesteps, -1, -1, -1, -1)
        return self.encode(images)


def published_keys(arch: str) -> dict[str, str]:
    """The published parameter and buffer names of ``arch``'s modules -> tdsnn's
    (``conv1.weight`` -> ``areas.conv1.conv.weight``, ``bn1.*`` -> ``areas.conv1.bn.*``,
    ``fc1.*`` -> ``areas.fc1.fc.*``, ``fc2.*`` -> ``readout.*``)."""
    modules = {"fc2": "readout"}
    for i, layer in enumerate(PAPER_LAYERS[arch], start=1):
        if layer.name == "fc1":
            modules["fc1"] = "areas.fc1.fc"
        else:
            modules[f"conv{i}"] = f"areas.{layer.name}.conv"
            if layer.batch_norm:
                modules[f"bn{i}"] = f"areas.{layer.name}.bn"
    return modules


def _published_names(module, state_dict, prefix, *args) -> None:
    """Rename the published keys of ``state_dict`` (in place) to tdsnn's before loading."""
    modules = published_keys(module.config.arch)
    for key in list(state_dict):
        if not key.startswith(prefix):
            continue
        head, _, leaf = key[len(prefix) :].rpartition(".")
        if head in modules:
            state_dict[f"{prefix}{modules[head]}.{leaf}"] = state_dict.pop(key)


def build_model(
    config: ModelConfig,
    num_classes: int,
    in_channels: int = 3,
    *,
    normalize: tuple[float, float] | None = None,
) -> LayerStack:
    """The network of ``config``: an :class:`AreaStack` (``model.arch: stack``) or a
    :class:`PaperNet`; ``normalize``: the run's ``data.normalize``."""
    network = AreaStack if config.arch == "stack" else PaperNet
    return network(config, num_classes, in_channels, normalize=normalize)


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
