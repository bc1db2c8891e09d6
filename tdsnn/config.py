"""Run configuration: frozen dataclasses loaded from YAML, overridden from the command line.

A run's configuration is one :class:`RunConfig` with four sections (``model``, ``data``,
``optim``, ``run``; the topographic loss adds ``topo``). YAML files and ``--option`` overrides
are checked against the dataclass fields: an unknown key or a value of the wrong type is a
:class:`~tdsnn.errors.ConfigError` that names the key. The resolved configuration is saved as
``config.yaml`` in the run directory and inside every checkpoint.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tdsnn.errors import ConfigError
from tdsnn.sheet import LAYOUTS
from tdsnn.topo import TopoConfig


@dataclass(frozen=True)
class ModelConfig:
    """The spiking area stack (DESIGN section 6) and its LIF neurons (section 5)."""

    area_stack: str = "v1-v4-it"
    # The defaults size the built-in run for a 2-core CPU (about 3 minutes); the area table's
    # full stack is width 1.0 with blocks None (= 2 per area), see configs/paper-resnet18.yaml.
    width: float = 0.25  # channel multiplier of the area table (1.0 = ResNet-18 widths)
    blocks: int | None = 1  # residual blocks per area; None = the area table's value
    timesteps: int = 4
    encoding: str = "direct"  # direct | rate
    tau: float = 2.0
    v_threshold: float = 1.0
    v_reset: float | None = 0.0  # None = soft reset (subtract the threshold)
    decay_input: bool = True
    detach_reset: bool = False
    surrogate: str = "atan"


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "shapes"
    data_root: str | None = None
    image_size: int = 24
    download: bool = False
    train_size: int | None = 8_000  # use this many training images; None = the whole split
    test_size: int | None = None  # use this many test images; None = the whole split
    num_workers: int = 0


@dataclass(frozen=True)
class OptimConfig:
    epochs: int = 3
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4


@dataclass(frozen=True)
class SheetConfig:
    """Cortical sheets of the areas (DESIGN section 7)."""

    layout: str = "auto"  # auto (what the topographic loss needs) | retinotopic | tiled | grid
    jitter: float = 0.1  # retinotopic: Gaussian jitter, as a fraction of an anchor cell
    positions: str | None = None  # sheets.pt from `tdsnn sheet optimize`, used as they are

    def __post_init__(self) -> None:
        if self.layout not in ("auto", *LAYOUTS):
            raise ConfigError(f"sheet layout {self.layout!r} is not one of {['auto', *LAYOUTS]}")


@dataclass(frozen=True)
class RunSettings:
    out: str | None = None  # run directory; None = runs/<area-stack>-<dataset>-seed<seed>
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = False  # bf16 autocast on CUDA
    log_every: int = 20  # optimiser steps between metrics.jsonl lines
    quiet: bool = False


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    topo: TopoConfig = field(default_factory=TopoConfig)
    sheet: SheetConfig = field(default_factory=SheetConfig)
    run: RunSettings = field(default_factory=RunSettings)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _section_to_dict(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"a config must be a mapping of sections, got {type(data).__name__}")
        sections = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(sections))
        if unknown:
            raise ConfigError(
                f"unknown config section(s) {unknown}; valid sections: {sorted(sections)}"
            )
        values = {}
        for name, value in data.items():
            section_type = _section_type(name)
            if section_type is TopoConfig:
                values[name] = TopoConfig.from_dict(value or {})
            else:
                values[name] = build_dataclass(section_type, value or {}, prefix=name)
        return cls(**values)

    def with_overrides(self, overrides: dict[str, Any]) -> RunConfig:
        """Return a copy with ``{"section.key": value}`` overrides applied (type-checked)."""
        data = self.to_dict()
        if "topo.name" in overrides:  # a preset name brings all of the preset's values
            data["topo"] = TopoConfig.preset(str(overrides["topo.name"])).to_dict()
        for dotted, value in overrides.items():
            section, _, key = dotted.partition(".")
            if section not in data or key not in data[section]:
                raise ConfigError(f"unknown config key {dotted!r}")
            data[section][key] = value
        return RunConfig.from_dict(data)


def _section_type(name: str) -> type:
    hints = typing.get_type_hints(RunConfig)
    return hints[name]


def _section_to_dict(section: Any) -> dict[str, Any]:
    if isinstance(section, TopoConfig):
        return section.to_dict()
    return dataclasses.asdict(section)


def build_dataclass(cls: type, values: dict[str, Any], *, prefix: str = "") -> Any:
    """Build a frozen dataclass from a mapping, rejecting unknown keys and mistyped values."""
    if not isinstance(values, dict):
        raise ConfigError(f"config section {prefix!r} must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in config section {prefix!r}; valid: {names}")
    return cls(**{k: coerce(v, hints[k], f"{prefix}.{k}") for k, v in values.items()})


def coerce(value: Any, annotation: Any, name: str) -> Any:
    """Convert ``value`` to ``annotation`` (bool, int, float, str, their Optionals and tuples)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in options:
                return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return coerce(value, option, name)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{name}: bad value {value!r}")
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split() if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        (item_type, *_) = typing.get_args(annotation) or (str,)
        return tuple(coerce(v, item_type, name) for v in value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in (
            "true",
            "yes",
            "1",
            "on",
            "false",
            "no",
            "0",
            "off",
        ):
            return value.lower() in ("true", "yes", "1", "on")
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if annotation in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        try:
            number = annotation(value) if not isinstance(value, str) else annotation(float(value))
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be a {annotation.__name__}, got {value!r}") from None
        if annotation is int and float(value) != number:
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        return number
    if annotation is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        return str(value)
    return value


def load_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> RunConfig:
    """Read a YAML run config (or the defaults when ``path`` is None) and apply overrides."""
    config = RunConfig()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        config = RunConfig.from_dict(data)
    return config.with_overrides(overrides or {})


def save_config(config: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
