"""Run configuration: frozen dataclasses loaded from YAML, overridden from the command line.

A run's configuration is one :class:`RunConfig` with six sections: ``model``
(:class:`~tdsnn.model_config.ModelConfig`, beside the area table), ``data``, ``optim``, ``topo``
(:class:`~tdsnn.topo.TopoConfig`, beside the losses), ``sheet`` and ``run``; it composes them
above both, so building a model never loads the loss package. Each field's type
and range is declared once, next to it (:func:`tdsnn.fields.option`), and checked whenever a
section is built, from YAML, from ``--option`` overrides or from Python: an unknown key or a
value of the wrong type or out of range is a :class:`~tdsnn.errors.ConfigError` that names the
key. The resolved configuration is saved as
``config.yaml`` in the run directory and inside every checkpoint.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tdsnn.atomic import write_atomic
from tdsnn.choices import DATASETS, LAYOUTS, OPTIMIZERS, SCHEDULES, SELECTIONS
from tdsnn.errors import ConfigError
from tdsnn.fields import check_fields, coerce, option
from tdsnn.model_config import ModelConfig, layer_names
from tdsnn.options import checkpoint_interval
from tdsnn.topo_config import TopoConfig


@dataclass(frozen=True)
class DataConfig:
    dataset: str = option("shapes", choices=DATASETS)
    data_root: str | None = None
    image_size: int = option(24, low=8, high=4096)  # pixels
    download: bool = False
    train_size: int | None = option(8_000, low=1, high=10**9)  # None = the whole split
    test_size: int | None = option(None, low=1, high=10**9)  # None = the whole split
    # images held out from the training split for validation (best.pt, --until-plateau);
    # 0 = none, and best.pt is then chosen on the test split
    val_size: int = option(0, low=0, high=10**9)
    num_workers: int = option(0, low=0, high=256)
    # (mean, std) the model's input images in [0, 1] are normalised with, every channel alike:
    # (x - mean) / std; None = none
    normalize: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "normalize", normalize_pair(self.normalize))
        check_fields(self, "data")


@dataclass(frozen=True)
class OptimConfig:
    epochs: int = option(3, low=1, high=10**6)
    batch_size: int = option(64, low=1, high=2**20)  # images per step per process
    lr: float = option(3e-3, low=0, low_open=True, high=100)  # peak learning rate
    # adamw: decoupled weight decay; adam and sgd: L2 (added to the gradient)
    optimizer: str = option("adamw", choices=OPTIMIZERS)
    weight_decay: float = option(1e-4, low=0, high=10)
    momentum: float = option(0.9, low=0, high=1)  # sgd only
    # cosine: 10 % linear warm-up, then cosine decay to 0; constant: lr at every step;
    # step: the warm-up, then x0.1 at 50 % and again at 75 % of the steps
    schedule: str = option("cosine", choices=SCHEDULES)
    # stop when validation accuracy has not improved for this many epochs (epochs = the cap)
    until_plateau: int | None = option(None, low=1, high=10**6)
    # best.pt: best-val = the epoch of the best validation accuracy (test accuracy without
    # --val-size); final = the last epoch
    select: str = option("best-val", choices=SELECTIONS)

    def __post_init__(self) -> None:
        check_fields(self, "optim")


@dataclass(frozen=True)
class SheetConfig:
    """Cortical sheets of the areas (DESIGN section 7)."""

    # auto (what the topographic loss needs) | random (the same, never swap-optimised) |
    # swap (the same, then swap-optimised and frozen) | retinotopic | tiled | grid
    layout: str = option("auto", choices=("auto", "random", "swap", *LAYOUTS))
    jitter: float = option(0.1, low=0, high=10)  # retinotopic jitter, fraction of a cell
    positions: str | None = None  # sheets.pt from `tdsnn sheet optimize`, used as they are

    def __post_init__(self) -> None:
        check_fields(self, "sheet")


@dataclass(frozen=True)
class RunSettings:
    out: str | None = None  # run directory; None = runs/<area-stack>-<dataset>-seed<seed>
    seed: int = option(0, low=0, high=2**32 - 1)
    device: str = option("auto", choices=("auto", "cpu", "cuda"))
    amp: bool = False  # bf16 autocast on CUDA
    cuda_graphs: bool = False  # capture the training step in CUDA graphs (CUDA, one process)
    log_every: int = option(20, low=1, high=10**9)  # optimiser steps between metrics lines
    quiet: bool = False
    keep_epochs: bool = False  # also keep every epoch's checkpoint (epochs/epoch-NNN.pt)
    # also save last.pt mid-epoch this often: "10m", "90s", "2h", "500steps" or "off"
    checkpoint_every: str = "10m"

    def __post_init__(self) -> None:
        check_fields(self, "run")
        checkpoint_interval(self.checkpoint_every)  # a ConfigError unless well formed


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    topo: TopoConfig = field(default_factory=TopoConfig)
    sheet: SheetConfig = field(default_factory=SheetConfig)
    run: RunSettings = field(default_factory=RunSettings)

    def __post_init__(self) -> None:
        if self.model.arch == "wsas-mnist" and self.data.normalize is None:
            if self.model.encoding == "direct":  # as their train_mnist.py normalises MNIST
                data = dataclasses.replace(self.data, normalize=MNIST_NORMALIZE)
                object.__setattr__(self, "data", data)
        _check_recipe(self)
        # the loss's areas and weights name layers of this stack: checked here, before any data
        self.topo.area_weight_map(self.topo.configured_areas(layer_names(self.model)))
        if self.model.neuron != "lif":
            spiking = self.topo.spiking_terms()
            if spiking:
                raise ConfigError(
                    f"--neuron {self.model.neuron}: the topographic loss {self.topo.name!r} "
                    f"uses {' and '.join(spiking)}, which only spiking units have"
                )

    def objective_topo(self) -> TopoConfig:
        """``topo`` as the objective reads it: ``as_input`` None resolved to the architecture's
        (``pre`` for Truong & Hasson's networks, whose AS reads fc1 before its ReLU; ``post``
        for the area stacks)."""
        if self.topo.as_input is not None:
            return self.topo
        as_input = "post" if self.model.arch == "stack" else "pre"
        return dataclasses.replace(self.topo, as_input=as_input)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _section_to_dict(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"a config must be a mapping of sections, got {type(data).__name__}")
        sections = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(sections), key=str)
        if unknown:
            raise ConfigError(
                f"unknown config section(s) {unknown}; valid sections: {sorted(sections)}"
            )
        values = {}
        for name, value in data.items():
            section_type = _section_type(name)
            value = {} if value is None else value  # an empty section keeps the defaults
            if section_type is TopoConfig:
                values[name] = TopoConfig.from_dict(value)
            else:
                values[name] = build_dataclass(section_type, value, prefix=name)
        return cls(**values)

    @classmethod
    def from_saved(cls, data: dict[str, Any]) -> RunConfig:
        """A resolved config that tdsnn wrote (a run's ``config.yaml``, a checkpoint's copy).

        tdsnn writes every key, so a key missing from it was added after the run started: it
        reads as the value that run computed (:data:`SAVED_CONFIG_DEFAULTS`), not today's
        default.
        """
        if isinstance(data, dict):
            data = dict(data)
            for section, defaults in SAVED_CONFIG_DEFAULTS.items():
                if isinstance(data.get(section), dict):
                    data[section] = {**defaults, **data[section]}
        return cls.from_dict(data)

    def with_overrides(self, overrides: dict[str, Any]) -> RunConfig:
        """Return a copy with ``{"section.key": value}`` overrides applied (type-checked)."""
        data = self.to_dict()
        if "topo.name" in overrides:  # a preset name brings all of the preset's values
            data["topo"] = TopoConfig.preset(overrides["topo.name"]).to_dict()
        for dotted, value in overrides.items():
            section, _, key = dotted.partition(".")
            if section not in data or key not in data[section]:
                raise ConfigError(f"unknown config key {dotted!r}")
            data[section][key] = value
        return RunConfig.from_dict(data)


MNIST_NORMALIZE = (0.1307, 0.3081)  # MNIST's pixel mean and std, the default of wsas-mnist


def _check_recipe(config: RunConfig) -> None:
    """Refuse, in one line, options that do not go together across sections."""
    optim = config.optim
    if optim.until_plateau is not None and config.data.val_size == 0:
        raise ConfigError(
            "--until-plateau needs a validation split taken from the training images: "
            "add --val-size N"
        )
    if optim.until_plateau is not None and optim.select == "final":
        raise ConfigError(
            "--until-plateau stops on the best validation epoch, --select final keeps the last "
            "one; drop one of them"
        )
    if config.data.normalize is not None and config.model.encoding != "direct":
        raise ConfigError(
            f"--normalize applies to the image itself; --encoding {config.model.encoding} "
            "draws spikes from intensities in [0, 1]: drop --normalize or use --encoding direct"
        )
    if optim.optimizer == "sgd" and config.run.cuda_graphs:
        raise ConfigError(
            "--cuda-graphs captures the adam and adamw steps; train --optimizer sgd without "
            "--cuda-graphs"
        )


def normalize_pair(value: Any) -> tuple[float, float] | None:
    """``data.normalize`` as ``(mean, std)``: from ``"0.1307,0.3081"``, a pair of numbers, or
    None (also ``"none"``); anything else, or a std <= 0, is a one-line ConfigError."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")):
        return None
    try:
        pair = coerce(value, tuple[float, ...], "data.normalize")
    except ConfigError:
        pair = ()
    if len(pair) != 2 or pair[1] <= 0:
        raise ConfigError(
            f"data.normalize must be MEAN,STD (two finite numbers, STD > 0, e.g. "
            f"0.1307,0.3081) or null, got {value!r}"
        )
    return pair


# keys added to the config after runs were first written, with what a run without them computed
# (TDSNN's recipe became the stc default with them)
SAVED_CONFIG_DEFAULTS = {"topo": {"area_reduction": "mean", "cluster_positions": 0}}


def _section_type(name: str) -> type:
    hints = typing.get_type_hints(RunConfig)
    return hints[name]


def _section_to_dict(section: Any) -> dict[str, Any]:
    """A section as plain YAML/JSON values (tuples as lists)."""
    if isinstance(section, TopoConfig):
        return section.to_dict()
    values = dataclasses.asdict(section)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def build_dataclass(cls: type, values: dict[str, Any], *, prefix: str = "") -> Any:
    """Build a frozen dataclass from a mapping, rejecting unknown keys and mistyped values."""
    if not isinstance(values, dict):
        raise ConfigError(f"config section {prefix!r} must be a mapping, got {values!r}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names), key=str)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in config section {prefix!r}; valid: {names}")
    return cls(**values)


def load_config(
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    saved: bool = False,
) -> RunConfig:
    """Read a YAML run config (or the defaults when ``path`` is None) and apply overrides.

    ``saved``: the file is a run's ``config.yaml`` (:meth:`RunConfig.from_saved`).
    """
    config = RunConfig()
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"config file {path} is a folder; pass a YAML file")
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path} cannot be read: {exc}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"config file {path} is not valid YAML: {_yaml_problem(exc)}"
            ) from exc
        config = RunConfig.from_saved(data) if saved else RunConfig.from_dict(data)
    return config.with_overrides(overrides or {})


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's error in one line: the problem and where it is."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return (getattr(exc, "problem", None) or " ".join(str(exc).split())) + where


def save_config(config: RunConfig, path: str | Path) -> None:
    write_atomic(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
