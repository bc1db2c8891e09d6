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
from importlib import resources

import torch
import yaml
from torch import Tensor, nn

from tdsnn.data.encoding import ENCODINGS, encode
from tdsnn.errors import ConfigError
from tdsnn.fields import check_fields, option
from tdsnn.neurons import LIF, SURROGATES
from tdsnn.ops.bn_lif import bn_lif

NEURONS = ("lif", "relu")
READOUTS = ("linear", "fc")


@dataclass(frozen=True)
class ModelConfig:
    """The spiking area stack (DESIGN section 6) and its LIF neurons (section 5)."""

    area_stack: str = "v1-v4-it"
    # The defaults size the built-in run for a 2-core CPU (about 3 minutes); the area table's
    # full stack is width 1.0 with blocks None (= 2 per area), see configs/paper-resnet18.yaml.
    width: float = option(0.25, low=0, low_open=True, high=16)  # channel multiplier (1 = ResNet-18)
    blocks: int | None = option(1, low=1, high=64)  # residual blocks per area; None = the table's
    timesteps: int = option(4, low=1, high=10_000)
    encoding: str = option("direct", choices=ENCODINGS)
    tau: float = option(2.0, low=1, high=1e6)  # membrane time constant (steps); LIF needs >= 1
    v_threshold: float = option(1.0, low=0, low_open=True, high=1e6)
    v_reset: float | None = option(0.0, low=-1e6, high=1e6)  # None = soft reset
    decay_input: bool = True
    detach_reset: bool = False
    surrogate: str = option("atan", choices=tuple(SURROGATES))
    # lif | relu: ReLU units, the non-spiking control (one step: timesteps is set to 1)
    neuron: str = option("lif", choices=NEURONS)
    # linear: classifier on the last area's rates | fc: global average pooling, a fully
    # connected topographic layer "readout" of readout_units units (a near-square grid),
    # dropout, classifier (Truong & Hasson's fc1)
    readout: str = option("linear", choices=READOUTS)
    readout_units: int = option(121, low=1, high=1_000_000)
    readout_dropout: float = option(0.5, low=0, high=0.99)

    def __post_init__(self) -> None:
        check_fields(self, "model")
        parse_area_stack(self.area_stack)  # a wrong area name fails here, before any data loads
        if self.neuron == "relu":
            if self.encoding != "direct":
                raise ConfigError(
                    f"model.encoding {self.encoding!r} codes the input in spikes; --neuron relu "
                    "takes the image itself: use --encoding direct"
                )
            object.__setattr__(self, "timesteps", 1)  # ReLU units have no time dimension
        if self.v_reset is not None and self.v_reset >= self.v_threshold:
            raise ConfigError(
                f"model.v_reset must be below model.v_threshold ({self.v_threshold}) for a hard "
                f"reset, got {self.v_reset}; lower it or set it to null (soft reset)"
            )


@dataclass(frozen=True)
class AreaSpec:
    """One row of the area table (``configs/areas.yaml``)."""

    name: str
    channels: int  # at width 1.0
    blocks: int
    stride: int
    sheet_mm: float
    neighbourhood_mm: float


@dataclass(frozen=True)
class AreaTable:
    stem_channels: int
    areas: dict[str, AreaSpec]  # in ventral order

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.areas)


def load_area_table() -> AreaTable:
    """Read the area table shipped with tdsnn (``configs/areas.yaml``)."""
    text = (resources.files("tdsnn.configs") / "areas.yaml").read_text()
    data = yaml.safe_load(text)
    areas = {name: AreaSpec(name=name, **row) for name, row in data["areas"].items()}
    return AreaTable(stem_channels=int(data["stem"]["channels"]), areas=areas)


def parse_area_stack(
    text: str, valid: Iterable[str] | None = None, name: str = "model.area_stack"
) -> tuple[str, ...]:
    """Parse ``"v1-v4-it"`` into ``("V1", "V4", "IT")``, checking names and ventral order
    (``name``: what the errors call the value)."""
    valid = tuple(valid) if valid is not None else load_area_table().names
    hint = f"valid areas in ventral order: {'-'.join(a.lower() for a in valid)}"
    parts = [p.strip().upper() for p in str(text).split("-")]
    if not text or not str(text).strip() or any(not p for p in parts):
        raise ConfigError(f"{name} {text!r} is empty or has an empty name; {hint}")
    for part in parts:
        if part not in valid:
            raise ConfigError(f"{name} {text!r}: unknown area {part.lower()!r}; {hint}")
    if len(set(parts)) != len(parts):
        raise ConfigError(f"{name} {text!r} names an area twice; {hint}")
    order = [valid.index(p) for p in parts]
    if order != sorted(order):
        raise ConfigError(f"{name} {text!r} is not in ventral order; {hint}")
    return tuple(parts)


READOUT = "readout"  # name of the fully connected topographic layer of model.readout 'fc'


def spell_areas(names: Iterable[str], available: Iterable[str]) -> tuple[list[str], list[str]]:
    """Area (or layer) ``names`` matched case-insensitively against ``available``:
    ``(the found ones as spelled in available, in the order asked; the names not found)``."""
    spelled = {name.lower(): name for name in available}
    found = [spelled[str(n).lower()] for n in names if str(n).lower() in spelled]
    return found, [str(n) for n in names if str(n).lower() not in spelled]


def layer_names(config: ModelConfig) -> tuple[str, ...]:
    """The names of a stack's areas, and ``readout`` with ``model.readout: fc``, in order (the
    :attr:`AreaStack.area_names` of ``config``, without building it)."""
    names = parse_area_stack(config.area_stack)
    return (*names, READOUT) if config.readout == "fc" else names


def scaled_channels(channels: int, width: float) -> int:
    return max(4, int(round(channels * width)))


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
    return LIF(
        tau=config.tau,
        v_threshold=config.v_threshold,
        v_reset=config.v_reset,
        decay_input=config.decay_input,
        detach_reset=config.detach_reset,
        surrogate=config.surrogate,
    )


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

    def __init__(self, config: ModelConfig, num_classes: int, in_channels: int = 3):
        super().__init__()
        table = load_area_table()
        self.config = config
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

    @property
    def timesteps(self) -> int:
        return self.config.timesteps

    def encode(self, images: Tensor) -> Tensor:
        """``[B, C, H, W]`` images in [0, 1] -> ``[T, B, C, H, W]`` input currents."""
        return encode(images, self.config.timesteps, self.config.encoding)

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
