"""The area table and the model's configuration: which areas a stack has, how wide and deep,
and its neurons (DESIGN sections 5 and 6), without torch.

:mod:`tdsnn.areas` builds the modules from these; the command line checks a configuration
against them before anything heavy loads.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources

import yaml

from tdsnn.choices import ENCODINGS, SURROGATES
from tdsnn.errors import ConfigError
from tdsnn.fields import check_fields, option

__all__ = [
    "ARCHS",
    "NEURONS",
    "PAPER_INPUT_CHANNELS",
    "PAPER_LAYERS",
    "READOUT",
    "READOUTS",
    "AreaSpec",
    "AreaTable",
    "ModelConfig",
    "PaperLayer",
    "layer_names",
    "load_area_table",
    "parse_area_stack",
    "scaled_channels",
    "spell_areas",
]

NEURONS = ("lif", "relu")
READOUTS = ("linear", "fc")
ARCHS = ("stack", "wsas-mnist", "wsas-cifar")


@dataclass(frozen=True)
class PaperLayer:
    """One layer of a published network (``model.arch`` other than ``stack``) as an area."""

    name: str  # the published module name (conv1, ..., fc1)
    channels: int  # output channels (units, for fc1: model.readout_units replaces it)
    pool_input: bool  # a 2 x 2 max-pool of the input, stride 2
    batch_norm: bool
    table_area: str  # the area-table row whose sheet geometry the layer borrows


# Truong & Hasson's networks (github.com/tlmnhut/weight_vs_act_toponet, arch.py): 3 x 3
# convolutions (padding 1, with bias), each followed by units and a 2 x 2 max-pool where they pool
# (here: the next layer pools its input, so that an area's output is its units'), global average
# pooling, fc1 (121 units on an 11 x 11 grid: the layer WS and AS act on), units, dropout 0.5, fc2.
PAPER_INPUT_CHANNELS = {"wsas-mnist": 1, "wsas-cifar": 3}  # grey digits, colour images
PAPER_LAYERS: dict[str, tuple[PaperLayer, ...]] = {
    "wsas-mnist": (  # MinimalCNN_GAP_DO: no batch norm
        PaperLayer("conv1", 32, False, False, "V1"),
        PaperLayer("conv2", 64, True, False, "V4"),
        PaperLayer("fc1", 121, True, False, "IT"),
    ),
    "wsas-cifar": (  # DeeperCNN_CIFAR10: batch norm after every convolution
        PaperLayer("conv1", 32, False, True, "V1"),
        PaperLayer("conv2", 64, True, True, "V2"),
        PaperLayer("conv3", 128, True, True, "V4"),
        PaperLayer("conv4", 256, True, True, "IT"),
        PaperLayer("fc1", 121, False, False, "IT"),
    ),
}


@dataclass(frozen=True)
class ModelConfig:
    """The spiking area stack (DESIGN section 6) and its LIF neurons (section 5)."""

    # stack: the area stack of the area table | wsas-mnist, wsas-cifar: Truong & Hasson's
    # networks (PAPER_LAYERS), whose layers are the areas; area_stack, width and blocks unused
    arch: str = option("stack", choices=ARCHS)
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
    surrogate: str = option("atan", choices=SURROGATES)
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

    def lif_params(self):  # -> tdsnn.ops.lif.LIFParams (imported on use: it needs torch)
        """The LIF neurons' parameters: the fields of this config named as ``LIFParams``'."""
        from tdsnn.ops.lif import LIFParams

        names = (f.name for f in dataclasses.fields(LIFParams))
        return LIFParams(**{name: getattr(self, name) for name in names})


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
    """The area table shipped with tdsnn (``configs/areas.yaml``; read once a process, since
    every model config checks its area names against it)."""
    data = _area_rows()
    areas = {name: AreaSpec(name=name, **row) for name, row in data["areas"].items()}
    return AreaTable(stem_channels=int(data["stem"]["channels"]), areas=areas)


@functools.cache
def _area_rows() -> dict:
    return yaml.safe_load((resources.files("tdsnn.configs") / "areas.yaml").read_text())


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
    :attr:`AreaStack.area_names` of ``config``, without building it); a published network's
    layers (``conv1``, ..., ``fc1``) for ``model.arch`` other than ``stack``."""
    if config.arch != "stack":
        return tuple(layer.name for layer in PAPER_LAYERS[config.arch])
    names = parse_area_stack(config.area_stack)
    return (*names, READOUT) if config.readout == "fc" else names


def scaled_channels(channels: int, width: float) -> int:
    return max(4, int(round(channels * width)))
